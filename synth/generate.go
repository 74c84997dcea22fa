package synth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/outdir"
	"github.com/matsurgery/matsurgery/progress"
)

// Options of a generation.
type Options struct {
	Family formats.Family
	Preset string        // tiny, small or full
	Seed   uint64        // the same seed gives the same bytes
	DType  formats.DType // F32, F16, BF16 (default) or F64
	Out    string        // output directory
	Force  bool          // replace a non-empty Out that holds a checkpoint

	// ShardSize is the largest shard in bytes; 0 means Hugging Face's
	// default (5 GB), which is how the published checkpoints are split.
	ShardSize int64
	// Workers drawing random values; 0 means GOMAXPROCS.
	Workers  int
	Progress progress.Reporter // nil = silent
}

// Result describes what was written.
type Result struct {
	Out      string               `json:"out"`
	Family   formats.Family       `json:"family"`
	Preset   string               `json:"preset"`
	Seed     uint64               `json:"seed"`
	DType    formats.DType        `json:"dtype"`
	Config   *formats.ModelConfig `json:"config"`
	Tensors  int                  `json:"tensors"`
	Params   int64                `json:"params"`
	Bytes    int64                `json:"tensor_bytes"` // tensor data, headers excluded
	Files    []string             `json:"files"`
	Duration time.Duration        `json:"duration_ns"`
}

// Throughput is tensor bytes written per second.
func (r *Result) Throughput() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) / r.Duration.Seconds()
}

// Plan returns the config and the tensors a generation writes, in order,
// without writing anything.
func Plan(o Options) (Architecture, *formats.ModelConfig, []formats.TensorSpec, error) {
	dt := o.DType
	if dt == "" {
		dt = formats.BF16
	}
	switch dt {
	case formats.F32, formats.F16, formats.BF16, formats.F64:
	default:
		return Architecture{}, nil, nil, fmt.Errorf("dtype %q: synth writes F32, F16, BF16 or F64", dt)
	}
	if o.ShardSize < 0 {
		return Architecture{}, nil, nil, fmt.Errorf("shard size %d: must be positive (0 = %d bytes, Hugging Face's default)", o.ShardSize, DefaultShardSize)
	}
	a, err := Lookup(o.Family, o.Preset)
	if err != nil {
		return Architecture{}, nil, nil, err
	}
	data, err := a.ConfigJSON(dt)
	if err != nil {
		return Architecture{}, nil, nil, err
	}
	cfg, err := formats.ParseModelConfig(data)
	if err != nil {
		return Architecture{}, nil, nil, fmt.Errorf("synth %s/%s: generated config.json does not parse: %w", o.Family, o.Preset, err)
	}
	specs, err := layout.Expected(cfg)
	if err != nil {
		return Architecture{}, nil, nil, fmt.Errorf("synth %s/%s: %w", o.Family, o.Preset, err)
	}
	for i := range specs {
		specs[i].DType = dt
	}
	return a, cfg, specs, nil
}

// Generate writes a random-weight checkpoint into o.Out: config.json and
// the safetensors shards (with an index when there is more than one). It
// writes into a temporary sibling directory and renames it into place when
// complete, so Out never holds a partial checkpoint.
func Generate(ctx context.Context, o Options) (res *Result, err error) {
	start := time.Now()
	if o.Out == "" {
		return nil, fmt.Errorf("no output directory given")
	}
	a, cfg, specs, err := Plan(o)
	if err != nil {
		return nil, err
	}
	dt := specs[0].DType
	if err := outdir.Check(o.Out, o.Force); err != nil {
		return nil, err
	}
	prog := progress.Or(o.Progress)
	dir, err := outdir.Create(o.Out)
	if err != nil {
		return nil, err
	}
	defer dir.Remove()
	tmp := dir.Path

	cfgJSON, err := a.ConfigJSON(dt)
	if err != nil {
		return nil, err
	}
	if err := outdir.WriteFile(filepath.Join(tmp, "config.json"), cfgJSON); err != nil {
		return nil, err
	}
	shard := o.ShardSize
	if shard == 0 {
		shard = DefaultShardSize
	}
	meta := map[string]string{
		"format":           "pt",
		"matsurgery.synth": fmt.Sprintf("family=%s preset=%s seed=%d", o.Family, o.Preset, o.Seed),
	}
	w, err := formats.NewWriter(tmp, specs, formats.WriterOptions{MaxShardSize: shard, Metadata: meta})
	if err != nil {
		return nil, fmt.Errorf("synth %s/%s: %w", o.Family, o.Preset, err)
	}
	defer w.Abort()

	res = &Result{Family: o.Family, Preset: o.Preset, Seed: o.Seed, DType: dt, Config: cfg, Tensors: len(specs)}
	for _, s := range specs {
		n := numel(s.Shape)
		res.Params += n
		res.Bytes += n * int64(dt.Size())
	}
	prog.Start("synth "+string(o.Family)+"/"+o.Preset, res.Bytes)
	err = stream(ctx, w, specs, o.Seed, o.Workers, prog)
	prog.Finish()
	if err != nil {
		return nil, err
	}
	if err := w.Commit(); err != nil {
		return nil, fmt.Errorf("synth %s/%s: %w", o.Family, o.Preset, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := dir.Commit(); err != nil {
		return nil, err
	}
	res.Out = o.Out
	entries, err := os.ReadDir(o.Out)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		res.Files = append(res.Files, e.Name())
	}
	res.Duration = time.Since(start)
	return res, nil
}

// chunk is one slice of one tensor, drawn by a worker and written in order.
type chunk struct {
	spec  int
	index int64 // chunk number within the tensor
	n     int   // elements
	data  []byte
	done  chan struct{}
	err   error
}

// stream draws every tensor's values on workers and writes them in order.
// At most a window of chunks is in flight, so memory stays bounded by
// window·ChunkElems·8 bytes whatever the model's size.
func stream(ctx context.Context, w *formats.Writer, specs []formats.TensorSpec, seed uint64, workers int, prog progress.Reporter) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	dt := specs[0].DType
	es := dt.Size()
	window := 2 * workers
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	bufs := sync.Pool{New: func() any { b := make([]byte, ChunkElems*es); return &b }}
	ordered := make(chan *chunk, window)
	work := make(chan *chunk, window)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // producer: enumerate chunks in write order
		defer wg.Done()
		defer close(work)
		defer close(ordered)
		for i, s := range specs {
			n := numel(s.Shape)
			for c := int64(0); c*ChunkElems < n; c++ {
				k := &chunk{spec: i, index: c, n: int(min(ChunkElems, n-c*ChunkElems)), done: make(chan struct{})}
				select {
				case ordered <- k:
				case <-ctx.Done():
					return
				}
				select {
				case work <- k:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vals := make([]float32, ChunkElems)
			for k := range work {
				s := specs[k.spec]
				bp := bufs.Get().(*[]byte)
				k.data = (*bp)[:k.n*es]
				v := vals[:k.n]
				Fill(v, seed, s.Name, k.index, DistributionOf(s.Name, s.Shape))
				if err := formats.EncodeFloat32(dt, v, k.data); err != nil {
					k.err = fmt.Errorf("tensor %s: %w", s.Name, err)
				}
				close(k.done)
			}
		}()
	}
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: unblocks the producer on early return

	for i, s := range specs {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := &chunkReader{ctx: ctx, ordered: ordered, spec: i, left: numel(s.Shape) * int64(es), pool: &bufs, prog: prog}
		if err := w.Write(s.Name, r); err != nil {
			if r.err != nil {
				return r.err
			}
			return fmt.Errorf("tensor %s: %w", s.Name, err)
		}
		if r.err != nil {
			return r.err
		}
		if r.cur != nil {
			r.release()
		}
		if r.left != 0 {
			return fmt.Errorf("tensor %s: writer stopped with %d bytes unread", s.Name, r.left)
		}
	}
	return nil
}

// chunkReader yields one tensor's bytes from the ordered chunks.
type chunkReader struct {
	ctx     context.Context
	ordered <-chan *chunk
	spec    int
	left    int64 // bytes of this tensor not yet read
	cur     *chunk
	off     int
	pool    *sync.Pool
	prog    progress.Reporter
	err     error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for r.cur == nil || r.off == len(r.cur.data) {
		if r.cur != nil {
			r.release()
		}
		if r.left == 0 {
			return 0, io.EOF
		}
		var k *chunk
		var ok bool
		select {
		case k, ok = <-r.ordered:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			return 0, r.err
		}
		if !ok {
			r.err = errors.New("synth: chunk stream ended early")
			return 0, r.err
		}
		select {
		case <-k.done:
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
			return 0, r.err
		}
		if k.err != nil {
			r.err = k.err
			return 0, r.err
		}
		if k.spec != r.spec {
			r.err = fmt.Errorf("synth: chunk of tensor %d while writing tensor %d", k.spec, r.spec)
			return 0, r.err
		}
		r.cur, r.off = k, 0
	}
	n := copy(p, r.cur.data[r.off:])
	r.off += n
	r.left -= int64(n)
	r.prog.Add(int64(n))
	return n, nil
}

func (r *chunkReader) release() {
	b := r.cur.data[:cap(r.cur.data)]
	r.pool.Put(&b)
	r.cur = nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}
