package distill

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/model"
)

// trainableName reports a tensor the device student trains or may train
// (the connector and the Mamba mixers): the ones it never shares.
func trainableName(name string) bool {
	return strings.HasPrefix(name, layout.ConnectorPrefix) ||
		(strings.HasPrefix(name, layout.LayerPrefix) && strings.Contains(name, ".mamba."))
}

// compareBlock is the size of the pieces sameFrozen compares at a time.
const compareBlock = 4 << 20

// sameFrozen reports whether every tensor of the student checkpoint st
// other than the connector and the mixers is in the checkpoint in
// teacherDir with the same dtype, shape and bytes: then the teacher's
// uploaded weights are exactly what the student would upload. note names
// the first difference.
func sameFrozen(st *formats.Checkpoint, teacherDir string) (same bool, note string, err error) {
	tc, err := formats.Open(teacherDir)
	if err != nil {
		return false, "", fmt.Errorf("teacher: %w", err)
	}
	defer tc.Close()
	a, b := make([]byte, compareBlock), make([]byte, compareBlock)
	for _, ti := range st.Tensors() {
		if trainableName(ti.Name) {
			continue
		}
		tt, ok := tc.Tensor(ti.Name)
		if !ok {
			return false, fmt.Sprintf("the teacher has no tensor %s", ti.Name), nil
		}
		if tt.DType != ti.DType || !slices.Equal(tt.Shape, ti.Shape) {
			return false, fmt.Sprintf("tensor %s is %s %v in the student, %s %v in the teacher", ti.Name, ti.DType, ti.Shape, tt.DType, tt.Shape), nil
		}
		ra, err := st.Section(ti.Name)
		if err != nil {
			return false, "", err
		}
		rb, err := tc.Section(ti.Name)
		if err != nil {
			return false, "", fmt.Errorf("teacher: %w", err)
		}
		for off := int64(0); off < ti.Size; off += compareBlock {
			n := int(min(compareBlock, ti.Size-off))
			if _, err := io.ReadFull(ra, a[:n]); err != nil {
				return false, "", fmt.Errorf("tensor %s: %w", ti.Name, err)
			}
			if _, err := io.ReadFull(rb, b[:n]); err != nil {
				return false, "", fmt.Errorf("teacher tensor %s: %w", ti.Name, err)
			}
			if !bytes.Equal(a[:n], b[:n]) {
				return false, fmt.Sprintf("tensor %s differs from the teacher's", ti.Name), nil
			}
		}
	}
	return true, "", nil
}

func devNormOf(n model.NormWeights) devNorm { return devNorm{w: n.W, b: n.B, rms: n.RMS, eps: n.Eps} }

// load takes the frozen weights from the base model and reads the
// trainable tensors from the student checkpoint ck, as the host Student
// reads them (loadMixer), into DeviceParams.
func (ds *DeviceStudent) load(ck *formats.Checkpoint) error {
	b := ds.base
	if b.ImageTokens() <= 0 {
		return fmt.Errorf("base model %s has no image rows", b.Dir)
	}
	host := &Student{Config: ds.Config, Hybrid: ds.Hybrid, Dir: ds.Dir, opts: Options{Chunk: ds.opts.Chunk}, sizes: ds.sizes}
	isMamba, err := host.mambaLayerSet()
	if err != nil {
		return err
	}
	ld := &loader{ck: ck}
	d, vd := ds.sizes.d, ds.Config.Vision.HiddenSize
	ds.conn.trainable = !ds.opts.FreezeConnector
	for i, c := range []struct {
		lin *devLinear
		in  int
	}{{&ds.conn.fc1, vd}, {&ds.conn.fc2, d}} {
		stem := fmt.Sprintf("%s%d", layout.ConnectorPrefix, 2*i)
		w, err := ld.param(stem+".weight", d, c.in)
		if err != nil {
			return err
		}
		bias, err := ld.optParam(stem+".bias", d)
		if err != nil {
			return err
		}
		if c.lin.pw, err = ds.newParam(w, true); err != nil {
			return err
		}
		if c.lin.pb, err = ds.newParam(bias, false); err != nil {
			return err
		}
		c.lin.w, c.lin.b = c.lin.pw.Data, c.lin.pb.data()
		if c.lin.w16, err = ds.gemmWeight(c.lin.pw); err != nil {
			return err
		}
	}
	if ds.conn.trainable {
		for _, p := range []*DeviceParam{ds.conn.fc1.pw, ds.conn.fc1.pb, ds.conn.fc2.pw, ds.conn.fc2.pb} {
			if p != nil {
				ds.params = append(ds.params, p)
			}
		}
	}
	ds.embed = b.Embedding()
	ds.final = devNormOf(b.FinalNorm())
	hw := b.Head()
	ds.head = devLinear{w: hw.W, b: hw.B}
	if ds.head.w16, err = ds.lowWeight(hw.W); err != nil {
		return fmt.Errorf("lm_head: %w", err)
	}
	for l := range ds.Config.Text.NumLayers {
		layer, err := ds.loadLayer(ld, host, l, isMamba[l])
		if err != nil {
			return fmt.Errorf("layer %d: %w", l, err)
		}
		ds.layers = append(ds.layers, layer)
		if layer.mix != nil {
			ds.params = append(ds.params, layer.mix.params()...)
		}
	}
	return nil
}

func (ds *DeviceStudent) loadLayer(ld *loader, host *Student, l int, isMamba bool) (*devLayer, error) {
	lw, err := ds.base.Layer(l)
	if err != nil {
		return nil, err
	}
	layer := &devLayer{index: l, inNorm: devNormOf(lw.InputNorm), postNorm: devNormOf(lw.PostNorm)}
	frozen := func(dst *devLinear, w model.LinearWeights, what string) error {
		if w.W == nil {
			return fmt.Errorf("the base model %s has no %s for this layer", ds.base.Dir, what)
		}
		*dst = devLinear{w: w.W, b: w.B}
		var err error
		if dst.w16, err = ds.lowWeight(w.W); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	if err := frozen(&layer.up, lw.Up, "MLP up projection"); err != nil {
		return nil, err
	}
	if err := frozen(&layer.down, lw.Down, "MLP down projection"); err != nil {
		return nil, err
	}
	if !isMamba {
		if err := frozen(&layer.qkv, lw.QKV, "attention q/k/v projection"); err != nil {
			return nil, err
		}
		if err := frozen(&layer.o, lw.O, "attention output projection"); err != nil {
			return nil, err
		}
		return layer, nil
	}
	hm, err := host.loadMixer(ld, l)
	if err != nil {
		return nil, err
	}
	if layer.mix, err = ds.deviceMixer(hm); err != nil {
		return nil, err
	}
	return layer, nil
}

// deviceMixer uploads a mixer read by the host loader.
func (ds *DeviceStudent) deviceMixer(hm *mixer) (*devMixer, error) {
	mx := &devMixer{cfg: hm.cfg}
	c := hm.cfg
	var err error
	for _, t := range []struct {
		dst  **DeviceParam
		src  *Param
		gemm bool
	}{
		{&mx.inProj.pw, hm.inProj.w, true}, {&mx.inProj.pb, hm.inProj.b, false},
		{&mx.convW, hm.convW, false}, {&mx.convB, hm.convB, false},
		{&mx.dtBias, hm.dtBias, false}, {&mx.aLog, hm.aLog, false}, {&mx.d, hm.d, false},
		{&mx.normW, hm.normW, false},
		{&mx.outProj.pw, hm.outProj.w, true}, {&mx.outProj.pb, hm.outProj.b, false},
	} {
		if *t.dst, err = ds.newParam(t.src, t.gemm); err != nil {
			return nil, err
		}
	}
	for _, lin := range []*devLinear{&mx.inProj, &mx.outProj} {
		lin.w, lin.b = lin.pw.Data, lin.pb.data()
		if lin.w16, err = ds.gemmWeight(lin.pw); err != nil {
			return nil, err
		}
	}
	convDim, k := c.ConvDim(), c.ConvKernel
	if mx.convW2, err = ds.be.Reshape(mx.convW.Data, convDim, k); err != nil {
		return nil, err
	}
	if mx.convG2, err = ds.be.Reshape(mx.convW.Grad, convDim, k); err != nil {
		return nil, err
	}
	a, err := negExp(hm.aLog.Data)
	if err != nil {
		return nil, fmt.Errorf("tensor %s: %w", hm.aLog.Name, err)
	}
	if mx.a, err = ds.upload(hm.aLog.Name+" (A = −exp)", a, c.NHeads); err != nil {
		return nil, err
	}
	if mx.dA, err = ds.upload(hm.aLog.Name+" (dA)", make([]float32, c.NHeads), c.NHeads); err != nil {
		return nil, err
	}
	return mx, nil
}

// params lists a mixer's tensors in the checkpoint's order (the host
// mixer's params order).
func (mx *devMixer) params() []*DeviceParam {
	var out []*DeviceParam
	for _, p := range []*DeviceParam{mx.inProj.pw, mx.inProj.pb, mx.convW, mx.convB, mx.dtBias, mx.aLog, mx.d, mx.normW, mx.outProj.pw, mx.outProj.pb} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// newParam uploads a host parameter as a float32 master with a zero
// gradient and zero moments, and a BF16 shadow when it is a matrix
// product's weight in bf16 precision. The host Param becomes the mirror
// (its gradient buffer is dropped). nil gives nil.
func (ds *DeviceStudent) newParam(p *Param, gemm bool) (*DeviceParam, error) {
	if p == nil {
		return nil, nil
	}
	dp := &DeviceParam{Name: p.Name, Shape: slices.Clone(p.Shape), Decay: p.Decay, host: p}
	zeros := make([]float32, p.Len())
	var err error
	if dp.Data, err = ds.upload(p.Name, p.Data, p.Shape...); err != nil {
		return nil, err
	}
	for _, t := range []*kernels.Tensor{&dp.Grad, &dp.m, &dp.v} {
		if *t, err = ds.upload(p.Name+" (state)", zeros, p.Shape...); err != nil {
			return nil, err
		}
	}
	if ds.bf16 && gemm {
		sh, err := ds.be.Alloc(kernels.BF16, p.Shape...)
		if err != nil {
			return nil, fmt.Errorf("%s: bf16 shadow: %w", p.Name, err)
		}
		dp.Shadow = ds.keep(sh)
		if err := ds.be.Convert(dp.Shadow, dp.Data); err != nil {
			return nil, fmt.Errorf("%s: bf16 shadow: %w", p.Name, err)
		}
	}
	p.Grad = nil
	return dp, nil
}

func (p *DeviceParam) data() kernels.Tensor {
	if p == nil {
		return nil
	}
	return p.Data
}

func (p *DeviceParam) grad() kernels.Tensor {
	if p == nil {
		return nil
	}
	return p.Grad
}

// gemmWeight is the weight a bf16 product reads for a trainable matrix:
// its shadow (nil in f32 precision).
func (ds *DeviceStudent) gemmWeight(p *DeviceParam) (kernels.Tensor, error) {
	if !ds.bf16 {
		return nil, nil
	}
	return p.Shadow, nil
}

// lowWeight is the weight a bf16 product reads for a frozen matrix: the
// matrix itself when it is BF16, else a BF16 copy (nil in f32 precision).
func (ds *DeviceStudent) lowWeight(w kernels.Tensor) (kernels.Tensor, error) {
	if !ds.bf16 || w.DType() == kernels.BF16 {
		if ds.bf16 {
			return w, nil
		}
		return nil, nil
	}
	t, err := ds.be.Alloc(kernels.BF16, w.Shape()...)
	if err != nil {
		return nil, fmt.Errorf("bf16 copy: %w", err)
	}
	ds.keep(t)
	if err := ds.be.Convert(t, w); err != nil {
		return nil, fmt.Errorf("bf16 copy: %w", err)
	}
	return t, nil
}
