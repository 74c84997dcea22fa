package distill

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/cuda"
	"github.com/matsurgery/matsurgery/trainlog"
)

// Tolerances of a data-parallel Train against a one-device Train of the
// same global batch: the same samples, the gradients summed in another
// order (float32), so the updates differ in the last bits.
const (
	parTrainTol = 1e-5 // each step's losses and gradient norm, relative; each checkpointed tensor, ‖Δθ‖/‖θ‖
	// An exported tensor is rounded to the student's dtype (BF16 for the
	// fixture): a last-bit difference may round an element one BF16 step
	// the other way, never more.
	bf16Step = 1.0 / 128
)

// parallelTrainOpts is a run of 4 updates of 3 samples each (shares of 2
// and 1 on two ranks) over 7 records of which one has lost its picture
// (skipped in each epoch: the update it falls in has 2 samples, and the
// dropout keys after it keep their places), with every loss term, answer masking,
// dropout, and checkpoints every 2 updates.
func parallelTrainOpts(t *testing.T) TrainOptions {
	t.Helper()
	data := shapesData(t, 7, 5)
	if err := os.Remove(filepath.Join(filepath.Dir(data), "images", "000004.png")); err != nil {
		t.Fatal(err)
	}
	o := trainOpts(t, data)
	o.Steps, o.Batch, o.Accum, o.SaveEvery, o.Keep = 4, 1, 3, 2, 4
	o.Loss = LossConfig{Alpha: 1, Beta: 1, Gamma: 0.5, Temperature: 2}
	o.MaskAnswers, o.Dropout, o.OnBadRecord = true, 0.1, dataset.Skip
	return o
}

func readMetrics(t *testing.T, out string) []trainlog.Record {
	t.Helper()
	recs, err := trainlog.Read(filepath.Join(out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// compareMetrics checks every step's losses, gradient norm and learning
// rate against want's, within parTrainTol relative.
func compareMetrics(t *testing.T, what string, got, want []trainlog.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d metrics lines, want %d", what, len(got), len(want))
	}
	rel := func(a, b float64) float64 { return math.Abs(a-b) / max(math.Abs(b), 1e-12) }
	for i := range want {
		g, w := got[i], want[i]
		if g.Step != w.Step || g.Epoch != w.Epoch {
			t.Errorf("%s: line %d is step %d (epoch %g), want %d (%g)", what, i, g.Step, g.Epoch, w.Step, w.Epoch)
		}
		for _, f := range []struct {
			name string
			a, b float64
		}{{"total", g.Losses.Total, w.Losses.Total}, {"kl", g.Losses.KL, w.Losses.KL}, {"l2", g.Losses.L2, w.Losses.L2},
			{"ce", g.Losses.CE, w.Losses.CE}, {"grad norm", g.GradNorm, w.GradNorm}, {"lr", g.LR, w.LR}} {
			if e := rel(f.a, f.b); !(e <= parTrainTol) {
				t.Errorf("%s: step %d: %s %.9g, one device %.9g (relative %.3g > %.3g)", what, w.Step, f.name, f.a, f.b, e, parTrainTol)
			}
		}
	}
}

// compareCheckpoint checks the trained tensors of two checkpoints within
// tol (‖Δθ‖/‖θ‖ per tensor) and returns the worst difference.
func compareCheckpoint(t *testing.T, what, got, want string, tol float64) float64 {
	t.Helper()
	a, err := formats.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := formats.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Len() != b.Len() || a.Len() == 0 {
		t.Fatalf("%s: %d tensors, want %d", what, b.Len(), a.Len())
	}
	worst := 0.0
	for _, ti := range a.Tensors() {
		av, err := a.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		bv, err := b.Float32(ti.Name)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		e := relDiff(bv, av)
		worst = max(worst, e)
		if !(e <= tol) {
			t.Errorf("%s: tensor %s relative difference %.3g > %.3g", what, ti.Name, e, tol)
		}
	}
	return worst
}

// compareExports checks two exports tensor by tensor: the same names,
// dtypes and shapes, every element within one BF16 step of the other's
// (last-bit differences rounded apart), and returns how many elements
// differ at all and how many there are.
func compareExports(t *testing.T, got, want string) (differ, total int) {
	t.Helper()
	a, err := formats.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := formats.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Len() != b.Len() || len(a.Files) != len(b.Files) {
		t.Fatalf("export: %d tensors in %d files, want %d in %d", b.Len(), len(b.Files), a.Len(), len(a.Files))
	}
	for _, ti := range a.Tensors() {
		bi, ok := b.Tensor(ti.Name)
		if !ok || bi.DType != ti.DType || !equalShape(bi.Shape, ti.Shape) {
			t.Fatalf("export tensor %s: %+v, want %+v", ti.Name, bi, ti)
		}
		av, err := a.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		bv, err := b.Float32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range av {
			total++
			if av[i] == bv[i] {
				continue
			}
			differ++
			if d := math.Abs(float64(av[i]) - float64(bv[i])); !(d <= bf16Step*math.Abs(float64(av[i]))) {
				t.Errorf("export tensor %s[%d]: %g, one device %g", ti.Name, i, bv[i], av[i])
				return differ, total
			}
		}
	}
	return differ, total
}

func checkpointDir(out string, step string) string { return filepath.Join(out, "checkpoints", step) }

// TestTrainParallel: Train on two ranks (CPU backends, a host all-reduce)
// logs, checkpoints and exports what Train on one device does with the
// same global batch; a run moves between rank counts on resume (two ranks
// then one device, one device then three ranks) and ends where the
// one-device run does; two ranks interrupted and resumed on two ranks end
// where two ranks going straight do, bit for bit.
func TestTrainParallel(t *testing.T) {
	one := parallelTrainOpts(t)
	one.Backend = cpu.New(2)
	ores, err := Train(context.Background(), one)
	if err != nil {
		t.Fatal(err)
	}
	if ores.Skipped == 0 || ores.Steps != 4 || ores.Ranks != 1 {
		t.Fatalf("one-device run: %+v (want 4 steps, a sample skipped)", ores)
	}
	want := readMetrics(t, one.Out)
	final := checkpointDir(one.Out, "step-00000004")

	two := one
	two.Backend, two.Ranks, two.Out = nil, newHostRanks(2), filepath.Join(t.TempDir(), "run")
	tres, err := Train(context.Background(), two)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("matches one device", func(t *testing.T) {
		if tres.Device != "2 × cpu (1 workers)" || tres.Ranks != 2 || tres.Steps != 4 || tres.Skipped != ores.Skipped ||
			tres.Trainable != ores.Trainable || tres.Export == "" {
			t.Errorf("two-rank run %+v", tres)
		}
		got := readMetrics(t, two.Out)
		compareMetrics(t, "two ranks", got, want)
		for i, r := range got {
			t.Logf("step %d: loss %.8g (one device %.8g), grad norm %.7g (%.7g)", r.Step, r.Losses.Total, want[i].Losses.Total, r.GradNorm, want[i].GradNorm)
		}
		if res := tres; res.FirstLoss != got[0].Losses.Total || res.Final.Total != got[3].Losses.Total {
			t.Errorf("result losses %g → %g, metrics %g → %g", res.FirstLoss, res.Final.Total, got[0].Losses.Total, got[3].Losses.Total)
		}
		for _, step := range []string{"step-00000002", "step-00000004"} {
			w := compareCheckpoint(t, "two ranks "+step, checkpointDir(two.Out, step), checkpointDir(one.Out, step), parTrainTol)
			t.Logf("checkpoint %s: worst tensor difference %.3g", step, w)
		}
		differ, total := compareExports(t, tres.Export, ores.Export)
		t.Logf("export: %d of %d BF16 elements one step apart, the rest equal", differ, total)
	})

	t.Run("two ranks then one device", func(t *testing.T) {
		o := two
		o.Ranks, o.Out, o.NoExport = newHostRanks(2), filepath.Join(t.TempDir(), "run"), true
		interruptAt(t, o, 2)
		o.Ranks, o.Backend, o.Resume = nil, cpu.New(2), true
		res, err := Train(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res.ResumedFrom != 2 || res.Steps != 4 || res.Ranks != 1 {
			t.Fatalf("resumed run %+v", res)
		}
		compareMetrics(t, "two ranks then one device", readMetrics(t, o.Out), want)
		w := compareCheckpoint(t, "two ranks then one device", checkpointDir(o.Out, "step-00000004"), final, parTrainTol)
		t.Logf("worst tensor difference %.3g", w)
	})

	t.Run("one device then three ranks", func(t *testing.T) {
		o := one
		o.Backend, o.Out, o.NoExport = cpu.New(2), filepath.Join(t.TempDir(), "run"), true
		interruptAt(t, o, 2)
		o.Backend, o.Ranks, o.Resume = nil, newHostRanks(3), true
		res, err := Train(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res.ResumedFrom != 2 || res.Steps != 4 || res.Ranks != 3 || !strings.HasPrefix(res.Device, "3 × cpu") {
			t.Fatalf("resumed run %+v", res)
		}
		compareMetrics(t, "one device then three ranks", readMetrics(t, o.Out), want)
		w := compareCheckpoint(t, "one device then three ranks", checkpointDir(o.Out, "step-00000004"), final, parTrainTol)
		t.Logf("worst tensor difference %.3g", w)
	})

	t.Run("two ranks resumed exactly", func(t *testing.T) {
		o := two
		o.Ranks, o.Out, o.NoExport = newHostRanks(2), filepath.Join(t.TempDir(), "run"), true
		interruptAt(t, o, 3)
		o.Ranks, o.Resume = newHostRanks(2), true
		res, err := Train(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res.ResumedFrom != 3 || res.Steps != 4 {
			t.Fatalf("resumed run %+v", res)
		}
		for _, f := range []string{"model.safetensors", "optimizer.bin"} {
			a, err := os.ReadFile(filepath.Join(checkpointDir(two.Out, "step-00000004"), f))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(checkpointDir(o.Out, "step-00000004"), f))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s differs between the straight and the resumed two-rank runs", f)
			}
		}
	})
}

// interruptAt runs o and cancels it once step updates are done: the run
// checkpoints them and reports itself interrupted.
func interruptAt(t *testing.T, o TrainOptions, step int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o.OnStep = func(r StepReport) {
		if r.Step == step {
			cancel()
		}
	}
	res, err := Train(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Interrupted || res.Steps != step {
		t.Fatalf("interrupted %v at step %d, want true at %d", res.Interrupted, res.Steps, step)
	}
}

// TestTrainParallelOptionErrors: what a data-parallel run refuses, before
// it makes its run directory.
func TestTrainParallelOptionErrors(t *testing.T) {
	data := shapesData(t, 2, 1)
	cases := []struct {
		name string
		edit func(*TrainOptions)
		want string
	}{
		{"negative", func(o *TrainOptions) { o.GPUs = -1 }, "must not be negative"},
		{"on the cpu", func(o *TrainOptions) { o.GPUs, o.Device = 2, "cpu" }, "does not run on the CPU"},
		{"one gpu named", func(o *TrainOptions) { o.GPUs, o.Device = 2, "cuda:1" }, "first 2"},
		{"train all", func(o *TrainOptions) {
			o.GPUs, o.TrainAll, o.Loss, o.Teacher = 2, true, LossConfig{}, ""
		}, "host only (not data-parallel)"},
		{"and a backend", func(o *TrainOptions) { o.GPUs, o.Backend = 2, cpu.New(1) }, "both a backend"},
		{"ranks and a device", func(o *TrainOptions) { o.Ranks, o.Device = newHostRanks(2), "cuda" }, "both a data-parallel group"},
		{"ranks of another size", func(o *TrainOptions) { o.Ranks, o.GPUs = newHostRanks(2), 3 }, "3 GPUs asked for"},
		{"no ranks", func(o *TrainOptions) { o.Ranks = newHostRanks(0) }, "no ranks"},
	}
	if ok, _ := cuda.Available(); !ok {
		cases = append(cases, struct {
			name string
			edit func(*TrainOptions)
			want string
		}{"no gpu", func(o *TrainOptions) { o.GPUs = 2 }, "data-parallel training on 2 GPUs: no usable GPU"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := trainOpts(t, data)
			c.edit(&o)
			_, err := Train(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
			if _, err := os.Stat(o.Out); err == nil {
				t.Errorf("a refused run made its directory %s", o.Out)
			}
		})
	}
}

// TestTrainParallelCUDA: Train with GPUs 2 (cuda.NewGroup over NCCL) runs
// end to end — on the emulator (kernels/cuda/testdata/emu, two devices, a
// fake NCCL) or on a machine's GPUs — and matches Train on one CUDA
// device with the same global batch. Skipped without CUDA, two devices or
// NCCL.
func TestTrainParallelCUDA(t *testing.T) {
	if ok, why := cuda.Available(); !ok {
		t.Skipf("no CUDA device: %s", why)
	}
	if _, _, err := cuda.NCCLVersion(); err != nil {
		t.Skipf("no NCCL: %v", err)
	}
	info, err := cuda.Info()
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Devices) < 2 {
		t.Skipf("%d CUDA device(s): data-parallel training needs 2", len(info.Devices))
	}
	one := parallelTrainOpts(t)
	one.Steps, one.SaveEvery = 2, 0
	one.Device = "cuda"
	ores, err := Train(context.Background(), one)
	if err != nil {
		t.Fatal(err)
	}
	two := one
	two.Device, two.GPUs, two.Out = "", 2, filepath.Join(t.TempDir(), "run")
	tres, err := Train(context.Background(), two)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tres.Device, "2 × cuda (") || tres.Ranks != 2 || tres.Steps != 2 || tres.Export == "" {
		t.Errorf("two-GPU run %+v", tres)
	}
	if tres.PeakDeviceMemory <= 0 {
		t.Errorf("two-GPU run: peak memory %d", tres.PeakDeviceMemory)
	}
	got := readMetrics(t, two.Out)
	compareMetrics(t, "two GPUs", got, readMetrics(t, one.Out))
	w := compareCheckpoint(t, "two GPUs", checkpointDir(two.Out, "step-00000002"), checkpointDir(one.Out, "step-00000002"), parTrainTol)
	differ, total := compareExports(t, tres.Export, ores.Export)
	t.Logf("%s against %s: losses %.7g → %.7g, worst tensor difference %.3g, export %d of %d elements one BF16 step apart",
		tres.Device, ores.Device, got[0].Losses.Total, got[len(got)-1].Losses.Total, w, differ, total)
}

// failingRanks is a host group whose all-reduce fails from call failAt on.
type failingRanks struct {
	*hostRanks
	calls, failAt int
}

func (f *failingRanks) AllReduceSum(perRank [][]kernels.Tensor) error {
	f.calls++
	if f.calls >= f.failAt {
		return errors.New("link down")
	}
	return f.hostRanks.AllReduceSum(perRank)
}

// TestTrainParallelUpdateFails: a failing update stops the run with an
// error that names the step, the cause and the update's records, after
// the updates before it were logged (and the background read of the next
// update's samples is stopped).
func TestTrainParallelUpdateFails(t *testing.T) {
	o := parallelTrainOpts(t)
	o.Ranks = &failingRanks{hostRanks: newHostRanks(2), failAt: 2}
	res, err := Train(context.Background(), o)
	if err == nil {
		t.Fatal("a failing all-reduce went unnoticed")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"step 2:", "gradient all-reduce: link down", "samples 0 to 1 are records ", `"shapes-00000`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if res == nil || res.Steps != 1 {
		t.Fatalf("result %+v, want one update done", res)
	}
	if recs := readMetrics(t, o.Out); len(recs) != 1 {
		t.Errorf("%d metrics lines, want 1", len(recs))
	}
}
