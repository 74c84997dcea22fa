package verify

import (
	"bytes"
	"os"

	"context"
	"encoding/binary"
	"fmt"
	"github.com/edsrzf/mmap-go"
	"io"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
)

// integrity checks (d): structure against config and mamba_config.json,
// finite values, and with a teacher the untouched tensors bit for bit.
type integrity struct {
	hy, te *formats.Checkpoint
	cfg    *formats.ModelConfig
	mc     *formats.MambaConfig
	desc   *layout.Descriptor

	global    []string
	configBad bool // mamba_config.json disagrees with config.json: numeric checks cannot be sized
	perLayer  map[int][]string
	tensors   int
	bytes     int64 // the hybrid's bytes checked
	compared  int64 // the teacher's bytes of the tensors compared (a difference ends a comparison early)
	identical int
	mu        sync.Mutex

	files map[string]*os.File // open shard files whose windows are mapped; nil: read instead
}

func newIntegrity(hy, te *formats.Checkpoint, cfg *formats.ModelConfig, mc *formats.MambaConfig, desc *layout.Descriptor) *integrity {
	return &integrity{hy: hy, te: te, cfg: cfg, mc: mc, desc: desc, perLayer: map[int][]string{}}
}

func (in *integrity) problem(layer int, format string, args ...any) {
	in.mu.Lock()
	defer in.mu.Unlock()
	msg := fmt.Sprintf(format, args...)
	if layer >= 0 && in.isMamba(layer) {
		in.perLayer[layer] = append(in.perLayer[layer], msg)
		return
	}
	in.global = append(in.global, msg)
}

func (in *integrity) isMamba(l int) bool {
	for _, m := range in.mc.MambaLayers() {
		if m == l {
			return true
		}
	}
	return false
}

// checkConfig compares mamba_config.json with config.json.
func (in *integrity) checkConfig() {
	t, m := in.cfg.Text, in.mc
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"n_layer", m.NLayer, t.NumLayers},
		{"d_model", m.DModel, t.HiddenSize},
		{"d_inner", m.DInner, t.NumHeads * t.HeadDim},
		{"d_xb", m.DXB, t.NumKVHeads * t.HeadDim},
		{"ssm_cfg.ngroups", m.NGroups, t.NumHeads},
		{"ssm_cfg.d_state", m.DState, t.HeadDim},
		{"intermediate_size", m.IntermediateSize, t.IntermediateSize},
	} {
		if c.got != c.want {
			in.configBad = true
			in.problem(-1, "%s: %s = %d, config.json implies %d", formats.MambaConfigName, c.name, c.got, c.want)
		}
	}
}

// checkStructure: every Mamba layer has exactly the mixer tensors with the
// right shapes and no attention; every attention layer the reverse.
func (in *integrity) checkStructure() {
	t := in.cfg.Text
	sizes := initmap.Sizes{DModel: t.HiddenSize, NHeads: t.NumHeads, NKVHeads: t.NumKVHeads, HeadDim: t.HeadDim}
	opts := initmap.Defaults()
	opts.KeepBias = in.mc.IsBias
	shapes := initmap.Shapes(sizes, opts)
	byLayer := map[int][]formats.TensorInfo{}
	for _, ti := range in.hy.Tensors() {
		if l := layout.LayerOf(ti.Name); l >= 0 {
			byLayer[l] = append(byLayer[l], ti)
		}
	}
	for l := 0; l < t.NumLayers; l++ {
		mp, ap := layout.MambaPrefix(l), layout.AttentionPrefix(l)
		have := map[string]formats.TensorInfo{}
		for _, ti := range byLayer[l] {
			have[ti.Name] = ti
		}
		if in.isMamba(l) {
			var dt formats.DType
			for _, suffix := range initmap.Order(in.mc.IsBias) {
				ti, ok := have[mp+suffix]
				if !ok {
					in.problem(l, "layer %d: missing tensor %s", l, mp+suffix)
					continue
				}
				if !sameShape(ti.Shape, shapes[suffix]) {
					in.problem(l, "layer %d: %s has shape %v, want %v", l, ti.Name, ti.Shape, shapes[suffix])
				}
				if !ti.DType.IsFloat() {
					in.problem(l, "layer %d: %s has dtype %s", l, ti.Name, ti.DType)
				}
				if dt == "" {
					dt = ti.DType
				} else if ti.DType != dt {
					in.problem(l, "layer %d: %s is %s, the rest of the mixer %s", l, ti.Name, ti.DType, dt)
				}
			}
			for name := range have {
				if strings.HasPrefix(name, ap) {
					in.problem(l, "layer %d is listed as Mamba but still has attention tensor %s", l, name)
				}
			}
			continue
		}
		for _, p := range []layout.Part{layout.AttnQ, layout.AttnK, layout.AttnV, layout.AttnO} {
			if _, ok := have[in.desc.LayerTensor(l, p, "weight")]; !ok {
				in.problem(l, "layer %d is listed as attention but has no %s", l, in.desc.LayerTensor(l, p, "weight"))
			}
		}
		for name := range have {
			if strings.HasPrefix(name, mp) {
				in.problem(l, "layer %d is listed as attention but has Mamba tensor %s", l, name)
			}
		}
	}
	if in.te == nil {
		return
	}
	// Teacher tensors absent from the hybrid must be exactly the attention of Mamba layers.
	for _, ti := range in.te.Tensors() {
		if _, ok := in.hy.Tensor(ti.Name); ok {
			continue
		}
		l := layout.LayerOf(ti.Name)
		if l >= 0 && in.isMamba(l) && strings.HasPrefix(ti.Name, layout.AttentionPrefix(l)) {
			continue
		}
		in.problem(l, "teacher tensor %s is missing from the hybrid", ti.Name)
	}
}

func sameShape(a, b []int64) bool {
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

// checkValues reads every tensor once: finite floats, and with a teacher the
// untouched ones byte-identical. Work is spread over the cores.
func (in *integrity) checkValues(ctx context.Context) error {
	in.mapFiles()
	defer in.unmapFiles()
	tensors := in.hy.Tensors()
	sort.Slice(tensors, func(i, j int) bool { return tensors[i].Size > tensors[j].Size })
	work := make(chan formats.TensorInfo)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ti := range work {
				if err := in.checkTensor(ti); err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		}()
	}
	for _, ti := range tensors {
		if ctx.Err() != nil {
			break
		}
		work <- ti
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return ctx.Err()
}

// mapFiles opens every shard of the hybrid and the teacher, whose regions
// the value checks then map read-only a window at a time: checked in the page
// cache without a copy, with resident memory bounded by the windows in use.
func (in *integrity) mapFiles() {
	files := append([]string(nil), in.hy.Files...)
	if in.te != nil {
		files = append(files, in.te.Files...)
	}
	in.files = map[string]*os.File{}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			in.unmapFiles()
			return
		}
		in.files[name] = f
	}
}

func (in *integrity) unmapFiles() {
	for _, f := range in.files {
		f.Close()
	}
	in.files = nil
}

// mapWindow maps size bytes of file at off (any alignment); the returned
// function unmaps. nil when the file is not open or mapping fails.
func (in *integrity) mapWindow(file string, off, size int64) ([]byte, func()) {
	f, ok := in.files[file]
	if !ok {
		return nil, nil
	}
	page := int64(os.Getpagesize())
	aligned := off / page * page
	m, err := mmap.MapRegion(f, int(size+off-aligned), mmap.RDONLY, 0, aligned)
	if err != nil {
		return nil, nil
	}
	return m[off-aligned:], func() { m.Unmap() }
}

// mapWindowBytes is how much of a tensor is mapped at a time; blockBytes
// how much is read at a time when mapping is not possible.
const (
	mapWindowBytes = 64 << 20
	blockBytes     = 4 << 20
)

func (in *integrity) checkTensor(ti formats.TensorInfo) error {
	l := layout.LayerOf(ti.Name)
	var tinfo formats.TensorInfo
	compare := false
	if in.te != nil && !(l >= 0 && in.isMamba(l) && strings.HasPrefix(ti.Name, layout.MambaPrefix(l))) {
		t, ok := in.te.Tensor(ti.Name)
		switch {
		case !ok:
			in.problem(l, "tensor %s is not in the teacher", ti.Name)
		case t.DType != ti.DType || !sameShape(t.Shape, ti.Shape):
			in.problem(l, "tensor %s is %s %v, the teacher's %s %v", ti.Name, ti.DType, ti.Shape, t.DType, t.Shape)
		default:
			tinfo, compare = t, true
		}
	}
	identical, finite, err := in.scan(ti, tinfo, compare)
	if err != nil {
		return err
	}
	if !finite {
		in.problem(l, "tensor %s holds NaN or Inf", ti.Name)
	}
	in.mu.Lock()
	in.tensors++
	in.bytes += ti.Size
	if compare {
		in.compared += tinfo.Size
	}
	if compare && identical {
		in.identical++
	}
	in.mu.Unlock()
	if compare && !identical {
		in.problem(l, "tensor %s differs from the teacher (the surgery must not touch it)", ti.Name)
	}
	return nil
}

// scan reads a tensor once: whether it equals the teacher's (when compare)
// and whether its values are finite. Mapped files are read in place; else
// positioned reads in blocks.
func (in *integrity) scan(ti, tinfo formats.TensorInfo, compare bool) (identical, finite bool, err error) {
	checkFinite := ti.DType.IsFloat() && ti.DType.Size() > 0
	if ok, identical, finite := in.scanMapped(ti, tinfo, compare, checkFinite); ok {
		return identical, finite, nil
	}
	sec, err := in.hy.Section(ti.Name)
	if err != nil {
		return false, false, err
	}
	var tsec *io.SectionReader
	if compare {
		if tsec, err = in.te.Section(ti.Name); err != nil {
			return false, false, err
		}
	}
	buf := make([]byte, min(int64(blockBytes), ti.Size))
	tbuf := make([]byte, len(buf))
	identical, finite = true, true
	es := int64(max(ti.DType.Size(), 1))
	for off := int64(0); off < ti.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), ti.Size-off)
		n -= n % es
		if n == 0 {
			n = ti.Size - off
		}
		b := buf[:n]
		if _, err := sec.ReadAt(b, off); err != nil {
			return false, false, fmt.Errorf("%s: tensor %s: %w", ti.File, ti.Name, err)
		}
		if compare && identical {
			tb := tbuf[:n]
			if _, err := tsec.ReadAt(tb, off); err != nil {
				return false, false, fmt.Errorf("teacher tensor %s: %w", ti.Name, err)
			}
			identical = bytes.Equal(b, tb)
		}
		if finite && checkFinite {
			finite = allFiniteRaw(ti.DType, b)
		}
	}
	return identical, finite, nil
}

// scanMapped is scan through mapped windows; ok is false when mapping is not
// possible (the caller then reads).
func (in *integrity) scanMapped(ti, tinfo formats.TensorInfo, compare, checkFinite bool) (ok, identical, finite bool) {
	if in.files == nil {
		return false, false, false
	}
	identical, finite = true, true
	for off := int64(0); off < ti.Size; off += mapWindowBytes {
		n := min(int64(mapWindowBytes), ti.Size-off)
		b, unmap := in.mapWindow(ti.File, ti.Offset+off, n)
		if b == nil {
			return false, false, false
		}
		if compare && identical {
			tb, tunmap := in.mapWindow(tinfo.File, tinfo.Offset+off, n)
			if tb == nil {
				unmap()
				return false, false, false
			}
			identical = bytes.Equal(b, tb)
			tunmap()
		}
		if finite && checkFinite {
			finite = allFiniteRaw(ti.DType, b)
		}
		unmap()
	}
	return true, identical, finite
}

// allFiniteRaw reports whether raw little-endian floats hold no NaN or Inf,
// testing the exponent bits directly (no decode).
func allFiniteRaw(dt formats.DType, b []byte) bool {
	switch dt {
	case formats.BF16, formats.F16:
		mask := uint16(0x7f80)
		if dt == formats.F16 {
			mask = 0x7c00
		}
		// Four values a word: a lane of (w & M) ^ M is zero exactly when that
		// value's exponent bits are all ones (NaN or Inf).
		m4 := uint64(mask) * 0x0001000100010001
		i := 0
		for ; i+7 < len(b); i += 8 {
			t := binary.LittleEndian.Uint64(b[i:])&m4 ^ m4
			if (t-0x0001000100010001)&^t&0x8000800080008000 != 0 {
				return false
			}
		}
		for ; i+1 < len(b); i += 2 {
			if binary.LittleEndian.Uint16(b[i:])&mask == mask {
				return false
			}
		}
		return true
	case formats.F32:
		for i := 0; i+3 < len(b); i += 4 {
			if binary.LittleEndian.Uint32(b[i:])&0x7f800000 == 0x7f800000 {
				return false
			}
		}
		return true
	case formats.F64:
		for i := 0; i+7 < len(b); i += 8 {
			if binary.LittleEndian.Uint64(b[i:])&0x7ff0000000000000 == 0x7ff0000000000000 {
				return false
			}
		}
		return true
	}
	v := make([]float32, len(b)/dt.Size())
	if formats.DecodeFloat32(dt, b, v) != nil {
		return false
	}
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}
