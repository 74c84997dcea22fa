package distill

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/trainlog"
)

// Train with a device student on the CPU backend gives the host trainer's
// run: every update's losses and gradient norm, and the trained tensors of
// the last checkpoint; its checkpoints and export have the host's layout.
// (Within devTrainTol: after a few AdamW updates the runs' last-bit
// differences have grown a little.)
func TestTrainOnDeviceMatchesHost(t *testing.T) {
	const devTrainTol = 1e-4
	data := shapesData(t, 6, 3)
	host := trainOpts(t, data)
	host.Steps, host.Accum, host.SaveEvery = 4, 2, 2
	host.Loss = LossConfig{Alpha: 1, Beta: 1, Gamma: 0.5, Temperature: 2}
	host.MaskAnswers, host.Dropout = true, 0.1
	hres, err := Train(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	dev := host
	dev.Out = filepath.Join(t.TempDir(), "run")
	dev.Backend = cpu.New(2)
	dres, err := Train(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	if dres.Device == "" || hres.Device != "" || dres.Steps != 4 || dres.Trainable != hres.Trainable {
		t.Errorf("device run %+v, host run %+v", dres, hres)
	}
	hr, err := trainlog.Read(filepath.Join(host.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	dr, err := trainlog.Read(filepath.Join(dev.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(hr) != 4 || len(dr) != 4 {
		t.Fatalf("%d host and %d device metrics lines, want 4", len(hr), len(dr))
	}
	rel := func(a, b float64) float64 { return math.Abs(a-b) / max(math.Abs(b), 1e-9) }
	for i := range hr {
		h, d := hr[i], dr[i]
		for _, f := range []struct {
			name string
			a, b float64
		}{{"total", d.Losses.Total, h.Losses.Total}, {"kl", d.Losses.KL, h.Losses.KL}, {"l2", d.Losses.L2, h.Losses.L2},
			{"ce", d.Losses.CE, h.Losses.CE}, {"grad norm", d.GradNorm, h.GradNorm}, {"lr", d.LR, h.LR}} {
			if e := rel(f.a, f.b); !(e <= devTrainTol) {
				t.Errorf("step %d: %s %.9g on the device, %.9g on the host (relative %.3g)", i+1, f.name, f.a, f.b, e)
			}
		}
		t.Logf("step %d: loss %.7g (host %.7g), grad norm %.6g (host %.6g)", i+1, d.Losses.Total, h.Losses.Total, d.GradNorm, h.GradNorm)
	}
	// The checkpoints hold the same tensors (names, shapes) with close values.
	for _, step := range []string{"step-00000002", "step-00000004"} {
		hc, err := formats.Open(filepath.Join(host.Out, "checkpoints", step))
		if err != nil {
			t.Fatal(err)
		}
		dc, err := formats.Open(filepath.Join(dev.Out, "checkpoints", step))
		if err != nil {
			t.Fatal(err)
		}
		if hc.Len() != dc.Len() {
			t.Fatalf("%s: %d tensors on the device, %d on the host", step, dc.Len(), hc.Len())
		}
		for _, ti := range hc.Tensors() {
			hv, err := hc.Float32(ti.Name)
			if err != nil {
				t.Fatal(err)
			}
			dv, err := dc.Float32(ti.Name)
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			if e := relDiff(dv, hv); !(e <= devTrainTol) {
				t.Errorf("%s: tensor %s relative error %.3g", step, ti.Name, e)
			}
		}
		hc.Close()
		dc.Close()
		// The optimiser state has the host's layout (names, sizes, update count).
		ho, do := optim.Recipe(), optim.Recipe()
		if err := ho.LoadFile(filepath.Join(host.Out, "checkpoints", step, "optimizer.bin")); err != nil {
			t.Fatal(err)
		}
		if err := do.LoadFile(filepath.Join(dev.Out, "checkpoints", step, "optimizer.bin")); err != nil {
			t.Fatal(err)
		}
		hs, hm := ho.State()
		ds, dm := do.State()
		if hs != ds || len(hm) != len(dm) {
			t.Fatalf("%s: device optimiser at %d updates with %d tensors, host at %d with %d", step, ds, len(dm), hs, len(hm))
		}
		for i := range hm {
			if hm[i].Name != dm[i].Name || hm[i].Decay != dm[i].Decay || len(hm[i].M) != len(dm[i].M) {
				t.Errorf("%s: moments %d: device %s, host %s", step, i, dm[i].Name, hm[i].Name)
			}
		}
	}
	// The export: the student's files, tensors and dtypes.
	he, err := formats.Open(hres.Export)
	if err != nil {
		t.Fatal(err)
	}
	defer he.Close()
	de, err := formats.Open(dres.Export)
	if err != nil {
		t.Fatal(err)
	}
	defer de.Close()
	if len(he.Files) != len(de.Files) || he.Len() != de.Len() {
		t.Fatalf("device export: %d files, %d tensors; host %d, %d", len(de.Files), de.Len(), len(he.Files), he.Len())
	}
	for _, ti := range he.Tensors() {
		di, ok := de.Tensor(ti.Name)
		if !ok || di.DType != ti.DType || !equalShape(di.Shape, ti.Shape) {
			t.Fatalf("export tensor %s: device %+v, host %+v", ti.Name, di, ti)
		}
	}
}

// A device run interrupted and resumed from its checkpoint ends where an
// uninterrupted device run does, bit for bit (masters and moments go to
// the checkpoint and back exactly); a bf16 run refuses to resume an f32
// run's directory; a host run's checkpoint resumes on the device.
func TestTrainOnDeviceResumeExact(t *testing.T) {
	data := shapesData(t, 5, 11)
	straight := trainOpts(t, data)
	straight.Steps, straight.SaveEvery, straight.NoExport, straight.Accum = 4, 2, true, 1
	straight.Loss = LossConfig{Alpha: 1, Beta: 1, Gamma: 0.5, Temperature: 2}
	straight.Dropout = 0.2
	straight.Backend = cpu.New(2)
	if _, err := Train(context.Background(), straight); err != nil {
		t.Fatal(err)
	}
	split := straight
	split.Out = filepath.Join(t.TempDir(), "run")
	ctx, cancel := context.WithCancel(context.Background())
	split.OnStep = func(r StepReport) {
		if r.Step == 2 {
			cancel()
		}
	}
	res, err := Train(ctx, split)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Interrupted || res.Steps != 2 {
		t.Fatalf("interrupted %v at step %d, want true at 2", res.Interrupted, res.Steps)
	}
	bf := split
	bf.Resume, bf.OnStep, bf.Precision = true, nil, PrecisionBF16
	if _, err := Train(context.Background(), bf); err == nil || !strings.Contains(err.Error(), "precision") {
		t.Errorf("a bf16 resume of an f32 run: %v", err)
	}
	split.Resume, split.OnStep = true, nil
	if res, err = Train(context.Background(), split); err != nil {
		t.Fatal(err)
	}
	if res.ResumedFrom != 2 || res.Steps != 4 {
		t.Fatalf("resumed from %d to %d, want 2 to 4", res.ResumedFrom, res.Steps)
	}
	for _, f := range []string{"model.safetensors", "optimizer.bin"} {
		a, err := os.ReadFile(filepath.Join(straight.Out, "checkpoints", "step-00000004", f))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(split.Out, "checkpoints", "step-00000004", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between the straight and the resumed device run", f)
		}
	}

	// Started on the host, resumed on the device: the device picks up the
	// host's masters and moments (the same run, continued within float32
	// rounding of the straight device run).
	mixed := straight
	mixed.Out, mixed.Backend = filepath.Join(t.TempDir(), "run"), nil
	ctx, cancel = context.WithCancel(context.Background())
	mixed.OnStep = func(r StepReport) {
		if r.Step == 2 {
			cancel()
		}
	}
	if _, err := Train(ctx, mixed); err != nil {
		t.Fatal(err)
	}
	mixed.Resume, mixed.OnStep, mixed.Backend = true, nil, cpu.New(2)
	if _, err := Train(context.Background(), mixed); err != nil {
		t.Fatal(err)
	}
	a, err := formats.Open(filepath.Join(straight.Out, "checkpoints", "step-00000004"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := formats.Open(filepath.Join(mixed.Out, "checkpoints", "step-00000004"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, ti := range a.Tensors() {
		av, _ := a.Float32(ti.Name)
		bv, err := b.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if e := relDiff(bv, av); !(e <= 1e-4) {
			t.Errorf("host-then-device run: tensor %s relative error %.3g against the device run", ti.Name, e)
		}
	}
}

// Options a device run refuses.
func TestTrainDeviceOptionErrors(t *testing.T) {
	data := shapesData(t, 2, 1)
	for _, c := range []struct {
		name string
		edit func(*TrainOptions)
		want string
	}{
		{"bf16 on the host", func(o *TrainOptions) { o.Precision = PrecisionBF16 }, "device"},
		{"recompute on the host", func(o *TrainOptions) { o.Recompute = true }, "device"},
		{"unknown precision", func(o *TrainOptions) { o.Precision, o.Backend = "fp8", cpu.New(1) }, "precision"},
		{"backend and device", func(o *TrainOptions) { o.Device, o.Backend = "cuda", cpu.New(1) }, "both"},
		{"train-all on a device", func(o *TrainOptions) {
			o.TrainAll, o.Backend, o.Loss, o.Teacher = true, cpu.New(1), LossConfig{}, ""
		}, "host only"},
		{"unknown device", func(o *TrainOptions) { o.Device = "tpu" }, "unknown device"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := trainOpts(t, data)
			c.edit(&o)
			_, err := Train(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}
