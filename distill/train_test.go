package distill

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/optim"
	"github.com/matsurgery/matsurgery/trainlog"
	"github.com/matsurgery/matsurgery/verify"
)

// shapesData writes n coloured-shapes samples once per test.
func shapesData(t testing.TB, n int, seed uint64) string {
	t.Helper()
	dir := t.TempDir()
	if err := dataset.WriteShapes(dir, n, seed, 56); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "data.json")
}

func trainOpts(t testing.TB, data string) TrainOptions {
	return TrainOptions{
		Teacher: filepath.Join(fixtures, "phi-tiny"), Student: filepath.Join(fixtures, "phi-tiny-h25"),
		Data: data, Out: filepath.Join(t.TempDir(), "run"),
		Steps: 6, Batch: 1, Accum: 2, LR: 3e-3,
		Schedule: optim.ScheduleConfig{Kind: "constant"}, Seed: 7, Workers: 2,
	}
}

// A short run on the fixtures lowers the loss, logs every update, keeps
// its checkpoints, and exports a hybrid that verify passes and that holds
// the trained values (rounded to BF16) and the student's other tensors
// bit for bit.
func TestTrainEndToEnd(t *testing.T) {
	o := trainOpts(t, shapesData(t, 6, 3))
	o.Steps, o.Accum, o.SaveEvery, o.Keep = 8, 1, 3, 2
	var seen []int
	o.OnStep = func(r StepReport) { seen = append(seen, r.Step) }
	res, err := Train(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 8 || res.Interrupted || len(seen) != 8 {
		t.Fatalf("steps %d (reports %v), interrupted %v", res.Steps, seen, res.Interrupted)
	}
	recs, err := trainlog.Read(filepath.Join(o.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 8 {
		t.Fatalf("%d metrics lines, want 8", len(recs))
	}
	first := (recs[0].Losses.Total + recs[1].Losses.Total) / 2
	last := (recs[6].Losses.Total + recs[7].Losses.Total) / 2
	t.Logf("loss %.5g → %.5g (KL %.4g → %.4g, L2 %.4g → %.4g)", first, last, recs[0].Losses.KL, recs[7].Losses.KL, recs[0].Losses.L2, recs[7].Losses.L2)
	if !(last < 0.9*first) {
		t.Errorf("loss went from %.5g to %.5g: not down by 10%%", first, last)
	}
	for _, r := range recs {
		if !(r.GradNorm > 0) || r.LR != o.LR || r.Losses.CE != 0 || !(r.Losses.KL > 0) || !(r.Losses.L2 > 0) {
			t.Errorf("step %d: record %+v", r.Step, r)
		}
	}
	steps, err := runDir(o.Out).checkpoints()
	if err != nil || len(steps) != 2 || steps[0] != 6 || steps[1] != 8 {
		t.Errorf("checkpoints %v (%v), want [6 8]", steps, err)
	}
	if _, err := os.Stat(res.Plot); err != nil {
		t.Error(err)
	}

	// The export: the student's layout, the trained values.
	rep, err := verify.Run(context.Background(), verify.Options{Hybrid: res.Export, Backend: cpu.New(2), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Pass {
		t.Errorf("verify of the export: %s", rep.FirstFailure())
	}
	in, err := formats.Open(o.Student)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	outCk, err := formats.Open(res.Export)
	if err != nil {
		t.Fatal(err)
	}
	defer outCk.Close()
	if len(in.Files) != len(outCk.Files) || in.Len() != outCk.Len() {
		t.Fatalf("export has %d files, %d tensors; student %d, %d", len(outCk.Files), outCk.Len(), len(in.Files), in.Len())
	}
	st, err := LoadStudent(o.Student, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ck := filepath.Join(o.Out, "checkpoints", "step-00000008")
	if _, err := loadCheckpoint(ck, st.params, optim.Recipe()); err != nil {
		t.Fatal(err)
	}
	trained := map[string]*Param{}
	for _, p := range st.params {
		trained[p.Name] = p
	}
	changed := 0
	for _, ti := range in.Tensors() {
		to, ok := outCk.Tensor(ti.Name)
		if !ok || to.DType != ti.DType || !equalShape(to.Shape, ti.Shape) {
			t.Fatalf("tensor %s: export %+v, student %+v", ti.Name, to, ti)
		}
		a, _ := in.Raw(ti.Name)
		b, _ := outCk.Raw(ti.Name)
		p, isTrained := trained[ti.Name]
		if !isTrained {
			if !bytes.Equal(a, b) {
				t.Errorf("frozen tensor %s changed", ti.Name)
			}
			continue
		}
		want := make([]byte, len(b))
		if err := formats.EncodeFloat32(ti.DType, p.Data, want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Errorf("trained tensor %s: export differs from the checkpoint's values", ti.Name)
		}
		if !bytes.Equal(a, b) {
			changed++
		}
	}
	if changed < len(trained)/2 {
		t.Errorf("only %d of %d trained tensors changed", changed, len(trained))
	}
	for _, f := range []string{"config.json", "mamba_config.json", "tokenizer.json"} {
		a, _ := os.ReadFile(filepath.Join(o.Student, f))
		b, err := os.ReadFile(filepath.Join(res.Export, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not copied unchanged (%v)", f, err)
		}
	}
	prov, err := os.ReadFile(filepath.Join(res.Export, "matsurgery.json"))
	if err != nil || !strings.Contains(string(prov), `"distill": {`) || !strings.Contains(string(prov), `"new_layers"`) {
		t.Errorf("matsurgery.json lacks the distill record or convert's: %s (%v)", prov, err)
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// 2N updates straight give the same weights, optimiser state and metrics
// (timings aside) as N updates, an interruption (ctx cancelled), a resume
// and N more.
func TestTrainResumeExact(t *testing.T) {
	data := shapesData(t, 5, 11)
	straight := trainOpts(t, data)
	straight.Steps, straight.SaveEvery, straight.NoExport = 4, 2, true
	straight.Schedule = optim.ScheduleConfig{Kind: "wsd", DecayFraction: 0.5}
	straight.WarmupFraction = 0.25
	straight.MaskAnswers, straight.Loss = true, LossConfig{Alpha: 1, Beta: 1, Gamma: 0.5, Temperature: 2}
	straight.Dropout = 0.2 // the resumed run draws the same masks
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
	// A resume with other settings is refused.
	bad := split
	bad.Resume, bad.Seed, bad.OnStep = true, 8, nil
	if _, err := Train(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "seed") {
		t.Errorf("resume with another seed: %v", err)
	}
	// A run directory in use is refused without --resume.
	if _, err := Train(context.Background(), TrainOptions{Student: split.Student, Teacher: split.Teacher, Data: data, Out: split.Out}); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("reuse without resume: %v", err)
	}
	split.Resume, split.OnStep = true, nil
	res, err = Train(context.Background(), split)
	if err != nil {
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
			t.Errorf("%s differs between the straight and the resumed run", f)
		}
	}
	ra, err := trainlog.Read(filepath.Join(straight.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := trainlog.Read(filepath.Join(split.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ra) != 4 || len(rb) != 4 {
		t.Fatalf("%d and %d metrics lines, want 4", len(ra), len(rb))
	}
	for i := range ra {
		ra[i].TokensPerSec, ra[i].Elapsed, rb[i].TokensPerSec, rb[i].Elapsed = 0, 0, 0, 0
		la, _ := ra[i].MarshalJSON()
		lb, _ := rb[i].MarshalJSON()
		if !bytes.Equal(la, lb) {
			t.Errorf("metrics line %d:\n%s\n%s", i+1, la, lb)
		}
	}
	if ra[0].LR != 0 || ra[3].LR == 0 || !(ra[0].Losses.CE > 0) {
		t.Errorf("schedule or CE not applied: %+v", ra)
	}
}

// Bad options and inputs are errors that say what is wrong.
func TestTrainErrors(t *testing.T) {
	data := shapesData(t, 2, 1)
	for _, tc := range []struct {
		name string
		edit func(*TrainOptions)
		want string
	}{
		{"no teacher", func(o *TrainOptions) { o.Teacher = "" }, "need a teacher"},
		{"zero loss", func(o *TrainOptions) { o.Loss = LossConfig{Temperature: 1} }, "every loss weight is 0"},
		{"negative lr", func(o *TrainOptions) { o.LR = -1 }, "learning rate"},
		{"teacher is hybrid", func(o *TrainOptions) { o.Teacher = o.Student }, "is itself a hybrid"},
		{"other family", func(o *TrainOptions) { o.Teacher = filepath.Join(fixtures, "qwen2-tiny") }, "phi-tiny"},
		{"missing data", func(o *TrainOptions) { o.Data = filepath.Join(t.TempDir(), "none.json") }, "none.json"},
		{"student not hybrid", func(o *TrainOptions) { o.Student = filepath.Join(fixtures, "phi-tiny") }, "not a hybrid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := trainOpts(t, data)
			tc.edit(&o)
			_, err := Train(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// The labels of a sample cover the spliced sequence.
func TestSpliceLabels(t *testing.T) {
	got := spliceLabels([]int{5, -200, 6, 7}, []int{-100, -100, 6, 7}, -200, 3)
	want := []int{-100, -100, -100, -100, 6, 7}
	if len(got) != len(want) {
		t.Fatalf("%v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
}

// The trainer's throughput on the tiny phi fixtures, one sample per
// update: distillation (teacher forward, student forward and backward with
// the layer branches, clipping, AdamW) and training every parameter of the
// plain teacher on the cross-entropy.
func BenchmarkTrainUpdate(b *testing.B) {
	data := shapesData(b, 16, 9)
	for _, all := range []bool{false, true} {
		name := "distill"
		if all {
			name = "train-all"
		}
		b.Run(name, func(b *testing.B) {
			o := trainOpts(b, data)
			o.Accum, o.Steps = 1, 1<<30
			if all {
				o.Teacher, o.Student, o.TrainAll = "", filepath.Join(fixtures, "phi-tiny"), true
			}
			tr, err := newTrainer(o)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.close()
			tokens, step := 0, 0
			for b.Loop() {
				_, _, n, err := tr.update(context.Background(), step)
				if err != nil {
					b.Fatal(err)
				}
				tokens += n
				step++
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

// --epochs counts updates from the data; a record whose picture is missing
// is skipped (and counted) under Skip and stops the run under Stop.
func TestTrainEpochsAndBadRecords(t *testing.T) {
	data := shapesData(t, 3, 4)
	if err := os.Remove(filepath.Join(filepath.Dir(data), "images", "000001.png")); err != nil {
		t.Fatal(err)
	}
	o := trainOpts(t, data)
	o.Steps, o.Epochs, o.OnBadRecord, o.NoExport = 0, 2, dataset.Skip, true
	res, err := Train(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := trainlog.Read(res.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	// 3 samples, 2 per update: 2 updates an epoch. An update whose only
	// sample is the bad one logs no line.
	if res.StepsTotal != 4 || res.Steps != 4 || len(recs) != 3 {
		t.Errorf("steps %d of %d, %d metrics lines", res.Steps, res.StepsTotal, len(recs))
	}
	for _, r := range recs {
		if r.Epoch != float64(r.Step)/2 {
			t.Errorf("step %d: epoch %g, want %g", r.Step, r.Epoch, float64(r.Step)/2)
		}
	}
	if res.Skipped != 2 { // the missing picture, once per epoch
		t.Errorf("skipped %d samples, want 2", res.Skipped)
	}
	o.Out, o.OnBadRecord = filepath.Join(t.TempDir(), "stop"), dataset.Stop
	if _, err := Train(context.Background(), o); err == nil || !strings.Contains(err.Error(), "000001.png") {
		t.Errorf("under Stop: %v", err)
	}
}
