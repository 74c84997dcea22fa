package distill

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/kernels/cuda"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/optim"
)

// hostRanks is a data-parallel group of CPU backends whose all-reduce goes
// through the host (float32 sums in rank order, as the emulator's NCCL).
// skipSum makes the all-reduce do nothing: the negative control.
type hostRanks struct {
	bes     []kernels.Backend
	skipSum bool
}

func newHostRanks(n int) *hostRanks {
	r := &hostRanks{}
	for range n {
		r.bes = append(r.bes, cpu.New(1))
	}
	return r
}

func (h *hostRanks) Size() int                     { return len(h.bes) }
func (h *hostRanks) Backend(r int) kernels.Backend { return h.bes[r] }

func (h *hostRanks) AllReduceSum(perRank [][]kernels.Tensor) error {
	if len(perRank) != len(h.bes) {
		return fmt.Errorf("%d lists for %d ranks", len(perRank), len(h.bes))
	}
	if h.skipSum {
		return nil
	}
	for i := range perRank[0] {
		var sum []float32
		for r, be := range h.bes {
			v, err := be.Download(perRank[r][i])
			if err != nil {
				return err
			}
			if sum == nil {
				sum = v
				continue
			}
			if len(v) != len(sum) {
				return fmt.Errorf("tensor %d: %d values on rank %d, %d on rank 0", i, len(v), r, len(sum))
			}
			for j := range v {
				sum[j] += v[j]
			}
		}
		for r, be := range h.bes {
			tmp, err := be.Upload(sum, kernels.F32, perRank[r][i].Shape()...)
			if err != nil {
				return err
			}
			err = be.Convert(perRank[r][i], tmp)
			be.Free(tmp)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

var parallelLoss = LossConfig{Alpha: 1, Beta: 0.5, Gamma: 0.3, Temperature: 2, Distance: L2Norm}

// parallelBatches are the global batches of a few updates on the phi
// fixture: windows of the golden prompt around its image, of several
// lengths, labels on the last rows; 4 samples, then 3 (shares of unequal
// size), then 1 (ranks with nothing to do). Dropout keys by global index.
func parallelBatches(t *testing.T, imageTokens int) [][]DeviceSample {
	g := openGolden(t, "phi-h25")
	pixels, all := g.f32("pixel_values"), g.ids("input_ids")
	img := slices.Index(all, -200)
	rng := newRand(71)
	var out [][]DeviceSample
	for u, size := range []int{4, 3, 1} {
		var batch []DeviceSample
		for i := range size {
			before, after := 1+(u+i)%3, 4+2*i
			ids := slices.Clone(all[max(0, img-before):min(len(all), img+after)])
			n := len(ids) + imageTokens - 1
			labels := make([]int, n)
			for j := range labels {
				labels[j] = IgnoreLabel
				if j >= n-5 {
					labels[j] = rng.IntN(1000)
				}
			}
			batch = append(batch, DeviceSample{IDs: ids, Pixels: pixels, Labels: labels,
				Dropout: &DropoutKey{Seed: 9, Step: u, Sample: i}})
		}
		out = append(out, batch)
	}
	return out
}

// run is what a sequence of updates left: each update's per-sample losses
// and norm, and the parameters after each.
type parallelRun struct {
	losses [][]Losses
	norms  []float64
	params []map[string][]float32
}

func parSnapshot(t *testing.T, ds *DeviceStudent) map[string][]float32 {
	t.Helper()
	out := map[string][]float32{}
	for _, p := range ds.Params() {
		v, err := ds.Backend().Download(p.Data)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name] = v
	}
	return out
}

// runSingle makes the updates on one student the plain way.
func runSingle(t *testing.T, ds *DeviceStudent, batches [][]DeviceSample) parallelRun {
	t.Helper()
	var r parallelRun
	opt := optim.Recipe()
	for _, batch := range batches {
		if err := ds.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
		var ls []Losses
		for _, smp := range batch {
			l, _, err := ds.Accumulate(smp, parallelLoss)
			if err != nil {
				t.Fatal(err)
			}
			ls = append(ls, l)
		}
		norm, err := ds.Update(len(batch), 2e-3, 0.5, opt)
		if err != nil {
			t.Fatal(err)
		}
		r.losses, r.norms = append(r.losses, ls), append(r.norms, norm)
		r.params = append(r.params, parSnapshot(t, ds))
	}
	return r
}

func runParallel(t *testing.T, ps *ParallelStudent, batches [][]DeviceSample) parallelRun {
	t.Helper()
	var r parallelRun
	opt := optim.Recipe()
	for k, batch := range batches {
		u, err := ps.Update(batch, parallelLoss, 2e-3, 0.5, opt)
		if err != nil {
			t.Fatalf("update %d: %v", k, err)
		}
		if len(u.Losses) != len(batch) || len(u.Lens) != len(batch) || slices.Contains(u.Lens, 0) {
			t.Fatalf("update %d: %d losses, lengths %v for %d samples", k, len(u.Losses), u.Lens, len(batch))
		}
		r.losses, r.norms = append(r.losses, u.Losses), append(r.norms, u.Norm)
		r.params = append(r.params, parSnapshot(t, ps.Rank(0)))
	}
	return r
}

// Tolerances of R ranks against one: the same samples, the gradients
// summed in another order (float32), hence AdamW steps that differ where
// a gradient element is near zero (see devParamTol).
const (
	parLossTol  = 1e-5 // a sample's loss terms (the first update: equal parameters, so equal)
	parNormTol  = 1e-5
	parParamTol = 1e-5 // ‖Δθ‖/‖θ‖ of each tensor (measured ≤ 6.5e-8 on the CPU)
)

// compareRuns checks a parallel run against the single rank's; it returns
// the worst parameter difference.
func compareRuns(t *testing.T, what string, got, want parallelRun) float64 {
	t.Helper()
	worst := 0.0
	for k := range want.params {
		for i, w := range want.losses[k] {
			g := got.losses[k][i]
			for _, c := range [][2]float64{{g.Total, w.Total}, {g.KL, w.KL}, {g.Layer, w.Layer}, {g.CE, w.CE}} {
				if math.Abs(c[0]-c[1]) > parLossTol*max(1, math.Abs(c[1])) {
					t.Errorf("%s: update %d sample %d: losses %+v, one rank %+v", what, k, i, g, w)
					break
				}
			}
		}
		if math.Abs(got.norms[k]-want.norms[k]) > parNormTol*want.norms[k] {
			t.Errorf("%s: update %d: norm %g, one rank %g", what, k, got.norms[k], want.norms[k])
		}
		for name, w := range want.params[k] {
			d := parRelDiff(got.params[k][name], w)
			worst = max(worst, d)
			if d > parParamTol {
				t.Errorf("%s: update %d: %s differs from one rank's by %.3g > %.3g", what, k, name, d, parParamTol)
			}
		}
	}
	return worst
}

// parRelDiff is ‖a − b‖/‖b‖ in float64.
func parRelDiff(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func loadPhiDevice(t *testing.T, be kernels.Backend) *DeviceStudent {
	t.Helper()
	teacher, err := model.Load(filepath.Join(fixtures, "phi-tiny"), be, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { teacher.Close() })
	ds, err := LoadDeviceStudent(filepath.Join(fixtures, "phi-tiny-h25"), be, teacher, DeviceOptions{Dropout: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ds.Close() })
	return ds
}

func loadParallel(t *testing.T, ranks Ranks) *ParallelStudent {
	t.Helper()
	ps, err := LoadParallelStudent(ranks, filepath.Join(fixtures, "phi-tiny-h25"), filepath.Join(fixtures, "phi-tiny"),
		model.Options{}, DeviceOptions{Dropout: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close() })
	return ps
}

// TestParallelMatchesOneRank: R ranks (CPU backends, host all-reduce)
// make the same updates as one student given the whole global batch,
// their replicas stay equal bit for bit, and without the all-reduce (the
// negative control) they do not match.
func TestParallelMatchesOneRank(t *testing.T) {
	single := loadPhiDevice(t, cpu.New(2))
	batches := parallelBatches(t, single.ImageTokens())
	want := runSingle(t, single, batches)
	for _, R := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("ranks=%d", R), func(t *testing.T) {
			ps := loadParallel(t, newHostRanks(R))
			got := runParallel(t, ps, batches)
			worst := compareRuns(t, "parallel", got, want)
			t.Logf("%d ranks against one: worst parameter difference %.3g", R, worst)
			if err := ps.CheckReplicas(); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("without all-reduce", func(t *testing.T) {
		ranks := newHostRanks(2)
		ranks.skipSum = true
		ps := loadParallel(t, ranks)
		_, err := ps.Update(batches[0], parallelLoss, 2e-3, 0.5, optim.Recipe())
		if err != nil {
			// Each rank clipped and stepped with its own partial sum.
			if !strings.Contains(err.Error(), "replicas disagree") {
				t.Fatalf("without the gradient sum: %v", err)
			}
			return
		}
		worst := 0.0
		for name, w := range want.params[0] {
			worst = max(worst, parRelDiff(parSnapshot(t, ps.Rank(0))[name], w))
		}
		if worst <= parParamTol {
			t.Fatalf("without the gradient sum the parameters still match one rank's (%.3g): the comparison cannot fail", worst)
		}
	})
}

func TestParallelShare(t *testing.T) {
	for _, c := range []struct{ n, ranks int }{{4, 2}, {3, 2}, {1, 3}, {10, 4}, {7, 7}, {0, 2}} {
		next := 0
		for r := range c.ranks {
			lo, hi := ParallelShare(c.n, c.ranks, r)
			if lo != next || hi < lo || hi-lo > (c.n+c.ranks-1)/c.ranks || hi-lo < c.n/c.ranks {
				t.Fatalf("ParallelShare(%d, %d, %d) = [%d, %d) after %d", c.n, c.ranks, r, lo, hi, next)
			}
			next = hi
		}
		if next != c.n {
			t.Fatalf("ParallelShare(%d, %d, ·) covers %d samples", c.n, c.ranks, next)
		}
	}
}

// TestParallelErrors: refused groups, and a failing sample on one rank
// that leaves every replica as it was and the group usable.
func TestParallelErrors(t *testing.T) {
	ranks := newHostRanks(2)
	a, b := loadPhiDevice(t, ranks.Backend(0)), loadPhiDevice(t, ranks.Backend(1))
	if _, err := NewParallelStudent(ranks, []*DeviceStudent{a}); err == nil {
		t.Error("one student for two ranks accepted")
	}
	if _, err := NewParallelStudent(ranks, []*DeviceStudent{b, a}); err == nil || !strings.Contains(err.Error(), "runs on") {
		t.Errorf("students on the wrong ranks: %v", err)
	}
	ps, err := NewParallelStudent(ranks, []*DeviceStudent{a, b})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	opt := optim.Recipe()
	if _, err := ps.Update(nil, parallelLoss, 1e-3, 1, opt); err == nil {
		t.Error("an update of no samples accepted")
	}
	batch := parallelBatches(t, a.ImageTokens())[0]
	before := parSnapshot(t, a)
	bad := slices.Clone(batch)
	bad[3].IDs = append(slices.Clone(bad[3].IDs), 1<<30) // rank 1's second sample
	_, err = ps.Update(bad, parallelLoss, 1e-3, 1, opt)
	if err == nil || !strings.Contains(err.Error(), "rank 1") || !strings.Contains(err.Error(), "sample 3") {
		t.Fatalf("a bad sample on rank 1: %v", err)
	}
	for name, v := range parSnapshot(t, a) {
		if !slices.Equal(v, before[name]) {
			t.Fatalf("%s changed by a failed update", name)
		}
	}
	if _, err := ps.Update(batch, parallelLoss, 1e-3, 1, opt); err != nil {
		t.Fatalf("after a failed update: %v", err)
	}
	if err := ps.CheckReplicas(); err != nil {
		t.Error(err)
	}
	ps.Close()
	if _, err := ps.Update(batch, parallelLoss, 1e-3, 1, opt); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("update after close: %v", err)
	}
}

// TestParallelCUDA is the same comparison on CUDA ranks joined by NCCL
// (cuda.Group): on the emulator (testdata/emu of kernels/cuda, two
// devices, a fake NCCL) or on the GPUs of a machine, against one rank of
// the same backend. It is skipped without CUDA or NCCL.
func TestParallelCUDA(t *testing.T) {
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
	R := min(len(info.Devices), 2)
	one, err := cuda.New(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { one.Close() }) // after the students' cleanups
	if _, ok := one.(kernels.Trainer); !ok {
		t.Skipf("the CUDA backend does not implement kernels.Trainer yet")
	}
	single := loadPhiDevice(t, one)
	batches := parallelBatches(t, single.ImageTokens())[:2]
	want := runSingle(t, single, batches)
	devs := make([]int, R)
	for i := range devs {
		devs[i] = i
	}
	g, err := cuda.NewGroup(devs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	ps := loadParallel(t, g)
	got := runParallel(t, ps, batches)
	t.Logf("%d CUDA ranks (%s) against one: worst parameter difference %.3g", R, g.Name(), compareRuns(t, "cuda parallel", got, want))
	if err := ps.CheckReplicas(); err != nil {
		t.Error(err)
	}
}

// BenchmarkParallelUpdate times data-parallel updates on the GPUs of the
// machine (cuda.Group over NCCL): the same global batch on one rank and on
// every GPU, bf16 precision, the recipe's loss, dropout and clipping;
// tokens/s counts the rows of the global batch (image rows included) an
// update. The speed-up of N GPUs is the ratio of the two figures.
// Checkpoints: $MATSURGERY_BENCH_TEACHER and $MATSURGERY_BENCH_STUDENT
// (e.g. `matsurgery synth --family phi --preset full` and its `convert
// --ratio 0.25`), else the tiny phi fixtures; each sample has
// $MATSURGERY_BENCH_ROWS rows (default 1428: one image and text), the
// global batch $MATSURGERY_BENCH_SAMPLES samples a GPU (default 2).
func BenchmarkParallelUpdate(b *testing.B) {
	if ok, why := cuda.Available(); !ok {
		b.Skipf("no CUDA device: %s", why)
	}
	info, err := cuda.Info()
	if err != nil {
		b.Fatal(err)
	}
	teacherDir, studentDir := os.Getenv("MATSURGERY_BENCH_TEACHER"), os.Getenv("MATSURGERY_BENCH_STUDENT")
	if teacherDir == "" || studentDir == "" {
		teacherDir, studentDir = filepath.Join(fixtures, "phi-tiny"), filepath.Join(fixtures, "phi-tiny-h25")
	}
	rows, perGPU := parEnvInt(b, "MATSURGERY_BENCH_ROWS", 1428), parEnvInt(b, "MATSURGERY_BENCH_SAMPLES", 2)
	gpus := len(info.Devices)
	for _, R := range slices.Compact([]int{1, gpus}) {
		b.Run(fmt.Sprintf("gpus=%d", R), func(b *testing.B) {
			devs := make([]int, R)
			for i := range devs {
				devs[i] = i
			}
			g, err := cuda.NewGroup(devs)
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			ps, err := LoadParallelStudent(g, studentDir, teacherDir, model.Options{Precision: model.PrecisionBF16},
				DeviceOptions{Precision: PrecisionBF16, Dropout: 0.1})
			if err != nil {
				b.Fatal(err)
			}
			defer ps.Close()
			batch := parBenchBatch(b, ps.Rank(0), gpus*perGPU, rows)
			opt := optim.Recipe()
			if _, err := ps.Update(batch, DefaultLoss(), opt.LR, 0.1, opt); err != nil { // warm-up: kernels compiled, plans built
				b.Fatal(err)
			}
			tokens := 0
			for b.Loop() {
				u, err := ps.Update(batch, DefaultLoss(), opt.LR, 0.1, opt)
				if err != nil {
					b.Fatal(err)
				}
				for _, n := range u.Lens {
					tokens += n
				}
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tokens/s")
			for r := range R {
				if _, peak, ok := ps.Rank(r).DeviceMemory(); ok {
					b.ReportMetric(float64(peak)/(1<<30), fmt.Sprintf("GiB-peak-rank%d", r))
				}
			}
		})
	}
}

func parEnvInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		b.Fatalf("$%s=%q: want a positive integer", name, s)
	}
	return v
}

// benchBatch is n samples of about rows rows: text ids around one image,
// seeded random ids and pixels, dropout keys by index.
func parBenchBatch(b *testing.B, ds *DeviceStudent, n, rows int) []DeviceSample {
	rng := newRand(72)
	v := ds.Config.Vision
	text := max(2, rows-ds.ImageTokens())
	var out []DeviceSample
	for i := range n {
		ids := make([]int, 0, text+1)
		for j := range text {
			if j == min(40, text/2) {
				ids = append(ids, ds.Config.ImageTokenIndex)
			}
			ids = append(ids, rng.IntN(ds.Config.Text.VocabSize))
		}
		out = append(out, DeviceSample{IDs: ids, Pixels: uniform(rng, v.NumChannels*v.ImageSize*v.ImageSize, -1, 1),
			Dropout: &DropoutKey{Seed: 1, Sample: i}})
	}
	return out
}
