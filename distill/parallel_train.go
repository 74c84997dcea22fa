package distill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/matsurgery/matsurgery/dataset"
	"github.com/matsurgery/matsurgery/kernels/cuda"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/trainlog"
)

// Data-parallel training (TrainOptions.GPUs or Ranks): Train loads a
// ParallelStudent, one DeviceStudent and teacher a rank, and hands each
// update's samples — the same samples, in the same order and with the
// same dropout keys (by position within the update) as a one-device run
// of the same global batch — to ParallelStudent.Update, which shares
// them out between the ranks and sums the gradients before the common
// optimiser step. The log, the checkpoints (rank 0's masters and moments:
// the one-device format, so a run may resume on another number of ranks)
// and the export are the one-device run's. While the ranks compute an
// update, the next update's samples are read and decoded on the host.

// parallel reports a data-parallel run.
func (o *TrainOptions) parallel() bool { return o.Ranks != nil || o.GPUs >= 2 }

// checkParallel refuses what a data-parallel run cannot do.
func (o *TrainOptions) checkParallel() error {
	d := strings.ToLower(strings.TrimSpace(o.Device))
	switch {
	case o.GPUs < 0:
		return fmt.Errorf("distill: %d GPUs: must not be negative", o.GPUs)
	case !o.parallel():
		return nil
	case o.Ranks != nil && o.Ranks.Size() == 0:
		return errors.New("distill: a data-parallel group of no ranks")
	case o.Ranks != nil && o.GPUs != 0 && o.GPUs != o.Ranks.Size():
		return fmt.Errorf("distill: %d GPUs asked for, the data-parallel group given has %d ranks", o.GPUs, o.Ranks.Size())
	case o.TrainAll:
		return errors.New("distill: training every parameter runs on the host only (not data-parallel)")
	case o.Backend != nil:
		return fmt.Errorf("distill: both a backend (%s) and a data-parallel group given", o.Backend.Name())
	case o.Ranks != nil && d != "":
		return fmt.Errorf("distill: both a data-parallel group and device %q given", o.Device)
	case d == "cpu":
		return fmt.Errorf("distill: data-parallel training on %d GPUs does not run on the CPU (device cpu)", o.GPUs)
	case d != "" && d != "cuda":
		return fmt.Errorf("distill: device %q: data-parallel training on %d GPUs takes the host's first %d (device cuda; CUDA_VISIBLE_DEVICES picks which)", o.Device, o.GPUs, o.GPUs)
	}
	return nil
}

// parallelTrainer is a data-parallel run's pieces.
type parallelTrainer struct {
	ps    *ParallelStudent
	owned io.Closer // the group Train opened (nil: the caller's Ranks)
	next  *pendingBatch
	// placeholder is the image token id and imageRows the rows an image
	// becomes (for the labels over the spliced sequence).
	placeholder, imageRows int
}

// pendingBatch is an update's samples being read in the background.
type pendingBatch struct {
	step   int
	done   chan struct{}
	cancel context.CancelFunc
	batch  parallelBatch
}

// parallelBatch is one update's samples, read and ready.
type parallelBatch struct {
	epoch   int
	samples []DeviceSample
	records []string // each sample's record number and id, for errors
	skipped int      // bad records left out
	err     error
}

// loadParallel opens the group (the GPUs' unless Ranks is given) and loads
// a student and, when the loss needs one, a teacher on every rank.
func (t *trainer) loadParallel() error {
	o := &t.opts
	p := &parallelTrainer{}
	ranks := o.Ranks
	if ranks == nil {
		g, err := openGPUs(o.GPUs)
		if err != nil {
			return err
		}
		p.owned, ranks = g, g
	}
	mo := model.Options{}
	if o.Precision == PrecisionBF16 {
		mo.Precision = model.PrecisionBF16
	}
	teacher := ""
	if o.needsTeacher() {
		teacher = o.Teacher
	}
	ps, err := LoadParallelStudent(ranks, o.Student, teacher, mo, DeviceOptions{Precision: o.Precision,
		Recompute: o.Recompute, FreezeConnector: o.FreezeConnector, Dropout: o.Dropout})
	if err != nil {
		if p.owned != nil {
			p.owned.Close()
		}
		return err
	}
	p.ps, t.par = ps, p
	p.placeholder, p.imageRows = ps.Rank(0).Config.ImageTokenIndex, ps.Rank(0).ImageTokens()
	return nil
}

// openGPUs joins the host's first n GPUs with NCCL, or says why it cannot.
func openGPUs(n int) (*cuda.Group, error) {
	what := fmt.Sprintf("distill: data-parallel training on %d GPUs", n)
	if ok, why := cuda.Available(); !ok {
		return nil, fmt.Errorf("%s: no usable GPU: %s", what, why)
	}
	info, err := cuda.Info()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(info.Devices) < n {
		names := make([]string, len(info.Devices))
		for i, d := range info.Devices {
			names[i] = fmt.Sprintf("cuda:%d %s", d.Index, d.Name)
		}
		return nil, fmt.Errorf("%s: this host shows %d (%s; CUDA_VISIBLE_DEVICES may hide some)", what, len(info.Devices), strings.Join(names, ", "))
	}
	devs := make([]int, n)
	for i := range devs {
		devs[i] = i
	}
	g, err := cuda.NewGroup(devs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return g, nil
}

// close stops the background read, then frees the students, the teachers
// and the group Train opened.
func (p *parallelTrainer) close() {
	p.dropNext()
	p.ps.Close()
	if p.owned != nil {
		p.owned.Close()
	}
}

// dropNext cancels a background read and waits for it to end.
func (p *parallelTrainer) dropNext() {
	if p.next != nil {
		p.next.cancel()
		<-p.next.done
		p.next = nil
	}
}

// rankStudent is the device student of a one-device run, or rank 0's of a
// data-parallel one (nil on the host).
func (t *trainer) rankStudent() *DeviceStudent {
	if t.par != nil {
		return t.par.ps.Rank(0)
	}
	return t.dev
}

// syncHost brings a device run's masters (and, with opt, its moments) into
// the host mirrors; a host run's are there already.
func (t *trainer) syncHost(withOpt bool) error {
	opt := t.opt
	if !withOpt {
		opt = nil
	}
	switch {
	case t.par != nil:
		return t.par.ps.SyncHost(opt)
	case t.dev != nil:
		return t.dev.SyncHost(opt)
	}
	return nil
}

// loadHost gives a device run (every rank) the host mirrors' values and
// the optimiser state: a resumed checkpoint.
func (t *trainer) loadHost() error {
	switch {
	case t.par != nil:
		return t.par.ps.LoadHost(t.opt)
	case t.dev != nil:
		return t.dev.LoadHost(t.opt)
	}
	return nil
}

// describeDevice fills in the result's device, ranks and peak memory (the
// largest of the ranks').
func (t *trainer) describeDevice(res *TrainResult) {
	if t.dev != nil {
		res.Device, res.Ranks = t.dev.Backend().Name(), 1
		if _, peak, ok := t.dev.DeviceMemory(); ok {
			res.PeakDeviceMemory = peak
		}
		return
	}
	if t.par == nil {
		return
	}
	ps := t.par.ps
	names := make([]string, ps.Size())
	for r := range names {
		names[r] = ps.Rank(r).Backend().Name()
		if _, peak, ok := ps.Rank(r).DeviceMemory(); ok {
			res.PeakDeviceMemory = max(res.PeakDeviceMemory, peak)
		}
	}
	res.Device, res.Ranks = ranksName(names), ps.Size()
}

// ranksName is "2 × cuda (NVIDIA H200)" for ranks "cuda:0 (NVIDIA H200)"
// and "cuda:1 (NVIDIA H200)": the count and the name without its ordinal
// when the ranks are alike, else the names listed.
func ranksName(names []string) string {
	strip := func(s string) string {
		head, rest, _ := strings.Cut(s, " ")
		if kind, ord, ok := strings.Cut(head, ":"); ok && ord != "" && strings.Trim(ord, "0123456789") == "" {
			head = kind
		}
		if rest == "" {
			return head
		}
		return head + " " + rest
	}
	first := strip(names[0])
	for _, n := range names[1:] {
		if strip(n) != first {
			return fmt.Sprintf("%d ranks: %s", len(names), strings.Join(names, ", "))
		}
	}
	return fmt.Sprintf("%d × %s", len(names), first)
}

// deviceSample is a dataset sample as a device student takes it, with the
// dropout masks of key.
func deviceSample(smp dataset.Sample, key DropoutKey, placeholder, imageRows int, maskAnswers bool) DeviceSample {
	labels := spliceLabels(smp.IDs, smp.Labels, placeholder, imageRows)
	in := DeviceSample{IDs: smp.IDs, Pixels: smp.Pixels, Labels: labels, Dropout: &key}
	if maskAnswers {
		in.Mask = AnswerMask(labels)
	}
	return in
}

// parallelUpdate runs optimiser step `step` (from 0) on every rank: the
// step's samples (read in the background during the previous update when
// it could), one ParallelStudent.Update, and the log record of the whole
// update — the means over all its samples, as a one-device run logs them.
// Cancelling ctx stops it before the update; an update under way ends.
func (t *trainer) parallelUpdate(ctx context.Context, step int) (*trainlog.Record, int, int, error) {
	o, p := &t.opts, t.par
	b := p.take(ctx, t, step)
	if b.err != nil {
		return nil, 0, 0, b.err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, err
	}
	if step+1 < t.steps {
		p.prefetch(ctx, t, step+1)
	}
	if len(b.samples) == 0 {
		return nil, b.skipped, 0, nil
	}
	began := time.Now()
	lr := t.sched.LR(step)
	u, err := p.ps.Update(b.samples, o.Loss, lr, o.MaxGradNorm, t.opt)
	if err != nil {
		// The update numbers its samples from 0; say which records they are.
		return nil, 0, 0, fmt.Errorf("distill: step %d: %w (the update's samples 0 to %d are records %s)",
			step+1, err, len(b.samples)-1, strings.Join(b.records, ", "))
	}
	var sum Losses
	tokens := 0
	for i, ls := range u.Losses {
		sum.Total += ls.Total
		sum.KL += ls.KL
		sum.Layer += ls.Layer
		sum.CE += ls.CE
		tokens += u.Lens[i]
	}
	k := float64(len(b.samples))
	rec := &trainlog.Record{
		Step:     step + 1,
		Epoch:    float64(b.epoch) + t.epochFraction(step),
		Losses:   trainlog.Losses{KL: sum.KL / k, L2: sum.Layer / k, CE: sum.CE / k, Total: sum.Total / k},
		LR:       lr,
		GradNorm: u.Norm,
	}
	if secs := time.Since(began).Seconds(); secs > 0 {
		rec.TokensPerSec = float64(tokens) / secs
	}
	return rec, b.skipped, tokens, nil
}

// take returns step's samples: the background read's when it was for
// step, else read now.
func (p *parallelTrainer) take(ctx context.Context, t *trainer, step int) parallelBatch {
	if n := p.next; n != nil && n.step == step {
		<-n.done
		p.next = nil
		return n.batch
	}
	p.dropNext()
	return t.readBatch(ctx, step)
}

// prefetch starts reading step's samples in the background.
func (p *parallelTrainer) prefetch(ctx context.Context, t *trainer, step int) {
	p.dropNext()
	cctx, cancel := context.WithCancel(ctx)
	n := &pendingBatch{step: step, done: make(chan struct{}), cancel: cancel}
	p.next = n
	go func() {
		defer close(n.done)
		n.batch = t.readBatch(cctx, step)
	}()
}

// readBatch reads and decodes the samples of step, a few at once (the
// dataset is safe for concurrent use), and lays them out in the update's
// order with their dropout keys, as the one-device update does: a bad
// record left out keeps its place in the numbering. The first error in
// that order is the batch's.
func (t *trainer) readBatch(ctx context.Context, step int) parallelBatch {
	o := &t.opts
	plan, err := t.batcher.Step(step)
	if err != nil {
		return parallelBatch{err: fmt.Errorf("distill: %w", err)}
	}
	var idx []int
	for _, micro := range plan.Micro {
		idx = append(idx, micro...)
	}
	got := make([]dataset.Sample, len(idx))
	errs := make([]error, len(idx))
	readers := max(1, min(4, runtime.GOMAXPROCS(0), len(idx)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	nextPos := 0
	for range readers {
		wg.Go(func() {
			for {
				mu.Lock()
				pos := nextPos
				nextPos++
				mu.Unlock()
				if pos >= len(idx) {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[pos] = err
					continue
				}
				got[pos], errs[pos] = t.data.Sample(idx[pos])
			}
		})
	}
	wg.Wait()
	b := parallelBatch{epoch: plan.Epoch}
	for pos := range idx {
		switch err := errs[pos]; {
		case errors.Is(err, dataset.ErrSkipped):
			b.skipped++
			continue
		case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
			return parallelBatch{err: err}
		case err != nil:
			return parallelBatch{err: fmt.Errorf("distill: step %d: %w", step+1, err)}
		}
		key := DropoutKey{Seed: o.Seed, Step: step, Sample: pos}
		b.samples = append(b.samples, deviceSample(got[pos], key, t.par.placeholder, t.par.imageRows, o.MaskAnswers))
		b.records = append(b.records, fmt.Sprintf("%d %q", got[pos].Record, got[pos].ID))
	}
	return b
}
