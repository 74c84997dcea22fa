package distill

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/optim"
)

// Data-parallel distillation: one DeviceStudent a rank (a GPU of one
// host, each with its own teacher), the same parameters on every rank.
// An update's samples are shared out between the ranks, each rank
// accumulates the gradients of its share, the gradients are summed across
// the ranks in place (one all-reduce: NCCL on GPUs), and every rank then
// makes the same Update over the whole batch — the mean over all the
// samples, the global norm, clipping and AdamW — so the ranks stay equal
// and the result is one rank's with the same global batch, up to the
// order of the float32 sums.

// Ranks is a data-parallel group: a backend per rank and an in-place sum
// of F32 tensors across the ranks (kernels/cuda's Group, over NCCL).
// AllReduceSum's perRank[r] lists rank r's tensors; the i-th tensors of
// all the ranks have the same size, and after the call each holds their
// sum (the same values on every rank).
type Ranks interface {
	Size() int
	Backend(rank int) kernels.Backend
	AllReduceSum(perRank [][]kernels.Tensor) error
}

// ParallelStudent is the DeviceStudents of a data-parallel run, one a rank.
type ParallelStudent struct {
	ranks    Ranks
	students []*DeviceStudent
	teachers []*model.Model // loaded by LoadParallelStudent (closed by Close)
	closed   bool
}

// NewParallelStudent joins students, students[r] on ranks.Backend(r),
// loaded from the same checkpoint with the same options: their trainable
// tensors must agree in number, names and shapes (their values are made
// equal by LoadHost or by loading them alike). The ParallelStudent does
// not own them (Close leaves them open).
func NewParallelStudent(ranks Ranks, students []*DeviceStudent) (*ParallelStudent, error) {
	if ranks == nil || ranks.Size() == 0 {
		return nil, errors.New("distill: parallel student: no ranks")
	}
	if len(students) != ranks.Size() {
		return nil, fmt.Errorf("distill: parallel student: %d students for %d ranks", len(students), ranks.Size())
	}
	ref := students[0].Params()
	for r, ds := range students {
		if ds == nil {
			return nil, fmt.Errorf("distill: parallel student: rank %d has no student", r)
		}
		if ds.Backend() != ranks.Backend(r) {
			return nil, fmt.Errorf("distill: parallel student: rank %d's student runs on %s, the rank is %s", r, ds.Backend().Name(), ranks.Backend(r).Name())
		}
		ps := ds.Params()
		if len(ps) != len(ref) {
			return nil, fmt.Errorf("distill: parallel student: rank %d trains %d tensors, rank 0 %d", r, len(ps), len(ref))
		}
		for i, p := range ps {
			if p.Name != ref[i].Name || !slices.Equal(p.Shape, ref[i].Shape) || p.Decay != ref[i].Decay {
				return nil, fmt.Errorf("distill: parallel student: rank %d's tensor %d is %s %v, rank 0's %s %v", r, i, p.Name, p.Shape, ref[i].Name, ref[i].Shape)
			}
		}
	}
	return &ParallelStudent{ranks: ranks, students: slices.Clone(students)}, nil
}

// LoadParallelStudent loads, on every rank at once, the teacher (when
// teacherDir is not "") with mopts and the hybrid in dir with opts, and
// joins them. The teachers are the ParallelStudent's (Close closes them).
func LoadParallelStudent(ranks Ranks, dir, teacherDir string, mopts model.Options, opts DeviceOptions) (*ParallelStudent, error) {
	if ranks == nil || ranks.Size() == 0 {
		return nil, errors.New("distill: parallel student: no ranks")
	}
	n := ranks.Size()
	students, teachers := make([]*DeviceStudent, n), make([]*model.Model, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			be := ranks.Backend(r)
			if teacherDir != "" {
				t, err := model.Load(teacherDir, be, mopts)
				if err != nil {
					errs[r] = fmt.Errorf("rank %d (%s): teacher: %w", r, be.Name(), err)
					return
				}
				teachers[r] = t
			}
			ds, err := LoadDeviceStudent(dir, be, teachers[r], opts)
			if err != nil {
				errs[r] = fmt.Errorf("rank %d (%s): %w", r, be.Name(), err)
				return
			}
			students[r] = ds
		})
	}
	wg.Wait()
	closeAll := func() {
		for r := range n {
			if students[r] != nil {
				students[r].Close()
			}
			if teachers[r] != nil {
				teachers[r].Close()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeAll()
		return nil, fmt.Errorf("distill: parallel student: %w", err)
	}
	ps, err := NewParallelStudent(ranks, students)
	if err != nil {
		closeAll()
		return nil, err
	}
	ps.teachers = teachers
	return ps, nil
}

// Size is the number of ranks.
func (ps *ParallelStudent) Size() int { return len(ps.students) }

// Rank returns rank r's student (for what is the same on every rank, rank
// 0's: Params, HostParams, MambaLayers, SequenceLength).
func (ps *ParallelStudent) Rank(r int) *DeviceStudent { return ps.students[r] }

// ParallelShare is the range [lo, hi) of an update's n samples that rank r
// accumulates: contiguous blocks whose sizes differ by at most one, the
// larger first (a rank may get none when n < Size).
func ParallelShare(n, ranks, r int) (lo, hi int) {
	q, rem := n/ranks, n%ranks
	lo = r*q + min(r, rem)
	hi = lo + q
	if r < rem {
		hi++
	}
	return lo, hi
}

// ParallelUpdate is what one update of a ParallelStudent returns.
type ParallelUpdate struct {
	Losses []Losses // each sample's, in the order given
	Lens   []int    // each sample's sequence length
	Norm   float64  // the global gradient norm before clipping
}

// Update makes one optimiser update over samples (the whole global
// batch): each rank clears its gradients and accumulates its ParallelShare of the
// samples (all ranks at once, each sample's dropout key as given), the
// gradients are summed across the ranks, and every rank applies
// Update(len(samples), lr, maxNorm, opt) — the ranks' arithmetic after the
// sum is identical, so their parameters stay equal. A failure before the
// sum leaves the parameters as they were (the next update clears the
// gradients); a failure of the sum itself leaves the group unusable.
func (ps *ParallelStudent) Update(samples []DeviceSample, cfg LossConfig, lr, maxNorm float64, opt *optim.AdamW) (ParallelUpdate, error) {
	u, err := ps.update(samples, cfg, lr, maxNorm, opt)
	if err != nil {
		return u, fmt.Errorf("distill: parallel update: %w", err)
	}
	return u, nil
}

func (ps *ParallelStudent) update(samples []DeviceSample, cfg LossConfig, lr, maxNorm float64, opt *optim.AdamW) (ParallelUpdate, error) {
	var u ParallelUpdate
	switch {
	case ps.closed:
		return u, errors.New("closed")
	case len(samples) == 0:
		return u, errors.New("no samples")
	case opt == nil:
		return u, errors.New("no optimiser settings")
	}
	R := ps.Size()
	u.Losses, u.Lens = make([]Losses, len(samples)), make([]int, len(samples))
	grads := make([][]kernels.Tensor, R)
	err := ps.each(func(r int, ds *DeviceStudent) error {
		if err := ds.ZeroGrad(); err != nil {
			return err
		}
		lo, hi := ParallelShare(len(samples), R, r)
		for i := lo; i < hi; i++ {
			ls, n, err := ds.Accumulate(samples[i], cfg)
			if err != nil {
				return fmt.Errorf("sample %d: %w", i, err)
			}
			u.Losses[i], u.Lens[i] = ls, n
		}
		g, err := ds.Gradients()
		grads[r] = g
		return err
	})
	if err != nil {
		return u, err
	}
	if R > 1 {
		if err := ps.ranks.AllReduceSum(grads); err != nil {
			return u, fmt.Errorf("gradient all-reduce: %w", err)
		}
	}
	norms := make([]float64, R)
	err = ps.each(func(r int, ds *DeviceStudent) error {
		var err error
		norms[r], err = ds.Update(len(samples), lr, maxNorm, opt)
		return err
	})
	if err != nil {
		return u, err
	}
	u.Norm = norms[0]
	for r, n := range norms {
		// Equal sums give equal norms; a difference means the replicas
		// have drifted apart (a nondeterministic reduction somewhere).
		if math.Abs(n-norms[0]) > 1e-6*math.Abs(norms[0]) {
			return u, fmt.Errorf("rank %d's gradient norm %g differs from rank 0's %g: the replicas disagree", r, n, norms[0])
		}
	}
	return u, nil
}

// each runs f for every rank at once and joins the errors, each naming
// its rank.
func (ps *ParallelStudent) each(f func(r int, ds *DeviceStudent) error) error {
	errs := make([]error, ps.Size())
	var wg sync.WaitGroup
	for r, ds := range ps.students {
		wg.Go(func() {
			if err := f(r, ds); err != nil {
				errs[r] = fmt.Errorf("rank %d (%s): %w", r, ds.Backend().Name(), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SyncHost downloads rank 0's parameters (and, with opt, its optimiser
// state) into rank 0's host mirrors: every rank holds the same values.
func (ps *ParallelStudent) SyncHost(opt *optim.AdamW) error { return ps.students[0].SyncHost(opt) }

// LoadHost gives every rank rank 0's host mirrors (HostParams) and, with
// opt, its optimiser state: what a resumed run starts from.
func (ps *ParallelStudent) LoadHost(opt *optim.AdamW) error {
	src := ps.students[0].HostParams()
	for r, ds := range ps.students[1:] {
		for i, p := range ds.HostParams() {
			if len(p.Data) != len(src[i].Data) {
				return fmt.Errorf("distill: parallel load: rank %d's %s holds %d values, rank 0's %d", r+1, p.Name, len(p.Data), len(src[i].Data))
			}
			copy(p.Data, src[i].Data)
		}
	}
	// opt is only read; the ranks load one after another all the same.
	for r, ds := range ps.students {
		if err := ds.LoadHost(opt); err != nil {
			return fmt.Errorf("distill: parallel load: rank %d: %w", r, err)
		}
	}
	return nil
}

// CheckReplicas downloads every rank's parameters and reports the first
// that differs from rank 0's in any bit.
func (ps *ParallelStudent) CheckReplicas() error {
	ref := ps.students[0].Params()
	for r, ds := range ps.students[1:] {
		for i, p := range ds.Params() {
			a, err := ps.students[0].Backend().Download(ref[i].Data)
			if err != nil {
				return fmt.Errorf("distill: replicas: rank 0 %s: %w", ref[i].Name, err)
			}
			b, err := ds.Backend().Download(p.Data)
			if err != nil {
				return fmt.Errorf("distill: replicas: rank %d %s: %w", r+1, p.Name, err)
			}
			for j := range a {
				if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
					return fmt.Errorf("distill: replicas: %s[%d] is %g on rank 0, %g on rank %d", p.Name, j, a[j], b[j], r+1)
				}
			}
		}
	}
	return nil
}

// Close closes the students' teachers that LoadParallelStudent loaded and
// those students; students given to NewParallelStudent stay open.
func (ps *ParallelStudent) Close() error {
	if ps.closed {
		return nil
	}
	ps.closed = true
	if ps.teachers == nil {
		return nil
	}
	for r, ds := range ps.students {
		ds.Close()
		if ps.teachers[r] != nil {
			ps.teachers[r].Close()
		}
	}
	return nil
}
