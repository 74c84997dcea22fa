package verify

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
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
	bytes     int64
	identical int
	mu        sync.Mutex
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

func (in *integrity) run(ctx context.Context) error {
	in.checkConfig()
	in.checkStructure()
	return in.checkValues(ctx)
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

const blockBytes = 4 << 20

func (in *integrity) checkTensor(ti formats.TensorInfo) error {
	l := layout.LayerOf(ti.Name)
	sec, err := in.hy.Section(ti.Name)
	if err != nil {
		return err
	}
	var tsec *io.SectionReader
	compare := false
	if in.te != nil && !(l >= 0 && in.isMamba(l) && strings.HasPrefix(ti.Name, layout.MambaPrefix(l))) {
		tinfo, ok := in.te.Tensor(ti.Name)
		switch {
		case !ok:
			in.problem(l, "tensor %s is not in the teacher", ti.Name)
		case tinfo.DType != ti.DType || !sameShape(tinfo.Shape, ti.Shape):
			in.problem(l, "tensor %s is %s %v, the teacher's %s %v", ti.Name, ti.DType, ti.Shape, tinfo.DType, tinfo.Shape)
		default:
			if tsec, err = in.te.Section(ti.Name); err != nil {
				return err
			}
			compare = true
		}
	}
	buf := make([]byte, min(int64(blockBytes), ti.Size))
	tbuf := make([]byte, len(buf))
	identical, finite := true, true
	es := int64(max(ti.DType.Size(), 1))
	for off := int64(0); off < ti.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), ti.Size-off)
		n -= n % es
		if n == 0 {
			n = ti.Size - off
		}
		b := buf[:n]
		if _, err := sec.ReadAt(b, off); err != nil {
			return fmt.Errorf("%s: tensor %s: %w", ti.File, ti.Name, err)
		}
		if compare && identical {
			tb := tbuf[:n]
			if _, err := tsec.ReadAt(tb, off); err != nil {
				return fmt.Errorf("teacher tensor %s: %w", ti.Name, err)
			}
			identical = bytes.Equal(b, tb)
		}
		if finite && ti.DType.IsFloat() && ti.DType.Size() > 0 {
			finite = allFiniteRaw(ti.DType, b)
		}
	}
	if !finite {
		in.problem(l, "tensor %s holds NaN or Inf", ti.Name)
	}
	in.mu.Lock()
	in.tensors++
	in.bytes += ti.Size
	if compare && identical {
		in.identical++
	}
	in.mu.Unlock()
	if compare && !identical {
		in.problem(l, "tensor %s differs from the teacher (the surgery must not touch it)", ti.Name)
	}
	return nil
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
		for i := 0; i+1 < len(b); i += 2 {
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
