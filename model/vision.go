package model

import (
	"fmt"
	"math"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/layout"
)

// visionTower is the SigLIP encoder up to the feature layer.
type visionTower struct {
	cfg       formats.VisionConfig
	patch     linear         // [hidden, C·p·p]: the conv as a matrix
	pos       kernels.Tensor // [1, patches, hidden]
	layers    []visionLayer  // the layers before the feature layer
	heads     int
	headDim   int
	act       kernels.GELUForm
	eps       float32
	dropFirst bool // the "patch" strategy drops row 0
}

// visionLayer is one SigLIP encoder layer.
type visionLayer struct {
	ln1, ln2 norm
	qkv, o   linear
	fc1, fc2 linear
}

// connector is mlp2x_gelu: Linear, exact-erf GELU, Linear.
type connector struct{ fc1, fc2 linear }

// featureRows is the number of rows one image becomes.
func (v *visionTower) featureRows() int {
	n := v.cfg.NumPatches()
	if v.dropFirst {
		n--
	}
	return n
}

// pixelCount is the number of values of one image: channels × size².
func (v *visionTower) pixelCount() int {
	return v.cfg.NumChannels * v.cfg.ImageSize * v.cfg.ImageSize
}

func loadVision(ld *loader, cfg *formats.ModelConfig) (*visionTower, error) {
	vc := cfg.Vision
	// A stride-patch conv without padding: 384 px in patches of 14 is a
	// 27×27 grid, the last 384 − 27·14 = 6 rows and columns unused.
	if err := vc.Validate(); err != nil {
		return nil, err
	}
	act, err := geluForm(vc.HiddenAct)
	if err != nil {
		return nil, fmt.Errorf("vision_config.hidden_act: %w", err)
	}
	idx, err := cfg.VisionFeatureIndex()
	if err != nil {
		return nil, err
	}
	v := &visionTower{cfg: vc, heads: vc.NumHeads, headDim: vc.HiddenSize / vc.NumHeads, act: act, eps: float32(vc.LayerNormEps)}
	switch cfg.VisionFeatureSelectStrategy {
	case "patch", "":
		v.dropFirst = true
	case "cls_patch":
	default:
		return nil, fmt.Errorf("vision_feature_select_strategy %q is not supported (patch, cls_patch)", cfg.VisionFeatureSelectStrategy)
	}
	if v.featureRows() <= 0 {
		return nil, fmt.Errorf("vision_config: %d patches leave no image rows", vc.NumPatches())
	}

	vp := layout.VisionPrefix + "vision_model."
	d, cpp := vc.HiddenSize, vc.NumChannels*vc.PatchSize*vc.PatchSize
	pw, err := ld.host(vp+"embeddings.patch_embedding.weight", d, vc.NumChannels, vc.PatchSize, vc.PatchSize)
	if err != nil {
		return nil, err
	}
	if v.patch.w, err = ld.upload(vp+"embeddings.patch_embedding.weight", pw, d, cpp); err != nil {
		return nil, err
	}
	v.patch.out = d
	if v.patch.b, err = ld.vector(vp+"embeddings.patch_embedding.bias", d); err != nil {
		return nil, err
	}
	pos, err := ld.host(vp+"embeddings.position_embedding.weight", vc.NumPatches(), d)
	if err != nil {
		return nil, err
	}
	if v.pos, err = ld.upload(vp+"embeddings.position_embedding.weight", pos, 1, vc.NumPatches(), d); err != nil {
		return nil, err
	}
	for i := range idx {
		lp := fmt.Sprintf("%sencoder.layers.%d.", vp, i)
		var l visionLayer
		if l.ln1, err = ld.norm(lp+"layer_norm1", d, true, false, v.eps); err != nil {
			return nil, err
		}
		if l.ln2, err = ld.norm(lp+"layer_norm2", d, true, false, v.eps); err != nil {
			return nil, err
		}
		a := lp + "self_attn."
		if l.qkv, err = ld.fusedLinear([]string{a + "q_proj", a + "k_proj", a + "v_proj"}, []int{d, d, d}, d); err != nil {
			return nil, err
		}
		if l.o, err = ld.linear(a+"out_proj", d, d, true); err != nil {
			return nil, err
		}
		if l.fc1, err = ld.linear(lp+"mlp.fc1", vc.IntermediateSize, d, true); err != nil {
			return nil, err
		}
		if l.fc2, err = ld.linear(lp+"mlp.fc2", d, vc.IntermediateSize, true); err != nil {
			return nil, err
		}
		v.layers = append(v.layers, l)
	}
	return v, nil
}

// visionPlan holds the tower's and the connector's activations for one image.
type visionPlan struct {
	ar           arena
	x, h, o      kernels.Tensor // [1,N,d]
	qkv          kernels.Tensor // [1,N,3d]
	qf, kf, vf   kernels.Tensor // [1,N,d]
	q, k, v, att kernels.Tensor // [1,N,heads,headDim]
	attFlat      kernels.Tensor // [1,N,d]
	mid          kernels.Tensor // [1,N,inter]
	xFlat, feats kernels.Tensor // [1,N·d] view of x; [1,F,d] selected rows
	featsFlat    kernels.Tensor // [1,F·d] view of feats
	c1, img      kernels.Tensor // [1,F,hidden]: connector hidden and output
}

func (m *Model) visionPlan() (*visionPlan, error) {
	if m.vplan != nil {
		return m.vplan, nil
	}
	v := m.vision
	N, d, F := v.cfg.NumPatches(), v.cfg.HiddenSize, v.featureRows()
	p := &visionPlan{ar: *kernels.NewArena(m.be)}
	a := &p.ar
	p.x, p.h, p.o = a.Alloc(1, N, d), a.Alloc(1, N, d), a.Alloc(1, N, d)
	p.qkv = a.Alloc(1, N, 3*d)
	p.qf, p.kf, p.vf = a.Alloc(1, N, d), a.Alloc(1, N, d), a.Alloc(1, N, d)
	p.q, p.k, p.v = a.View(p.qf, 1, N, v.heads, v.headDim), a.View(p.kf, 1, N, v.heads, v.headDim), a.View(p.vf, 1, N, v.heads, v.headDim)
	p.att = a.Alloc(1, N, v.heads, v.headDim)
	p.attFlat = a.View(p.att, 1, N, d)
	p.mid = a.Alloc(1, N, v.cfg.IntermediateSize)
	p.xFlat = a.View(p.x, 1, N*d)
	p.feats = a.Alloc(1, F, d)
	p.featsFlat = a.View(p.feats, 1, F*d)
	p.c1, p.img = a.Alloc(1, F, m.sizes.d), a.Alloc(1, F, m.sizes.d)
	if a.Err() != nil {
		a.Free()
		return nil, fmt.Errorf("vision activations: %w", a.Err())
	}
	m.vplan = p
	return p, nil
}

// ImageFeatures runs the vision tower and the connector on one image,
// pixels [channels, size, size] already normalised ((v/255 − 0.5)/0.5),
// and returns the rows it contributes to the sequence, [1, ImageTokens(),
// hidden] (owned by the Model).
func (m *Model) ImageFeatures(pixels []float32) (kernels.Tensor, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	var t kernels.Tensor
	err := kernels.RunPinned(m.be, func() (err error) {
		t, err = m.imageFeatures(pixels)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("model: image features: %w", err)
	}
	return t, nil
}

func (m *Model) imageFeatures(pixels []float32) (kernels.Tensor, error) {
	v := m.vision
	if len(pixels) != v.pixelCount() {
		return nil, fmt.Errorf("image has %d values, want %d×%d×%d = %d", len(pixels), v.cfg.NumChannels, v.cfg.ImageSize, v.cfg.ImageSize, v.pixelCount())
	}
	for i, x := range pixels {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("pixel value %d is %g", i, x)
		}
	}
	p, err := m.visionPlan()
	if err != nil {
		return nil, err
	}
	be := m.be
	N, d := v.cfg.NumPatches(), v.cfg.HiddenSize

	// Patch embedding: the stride-p conv as im2col (host) · weightᵀ.
	patches, err := be.Upload(im2col(pixels, v.cfg.NumChannels, v.cfg.ImageSize, v.cfg.PatchSize), kernels.F32, 1, N, v.cfg.NumChannels*v.cfg.PatchSize*v.cfg.PatchSize)
	if err != nil {
		return nil, fmt.Errorf("upload patches: %w", err)
	}
	defer be.Free(patches)
	if err := m.mm.linear(v.patch, p.x, patches); err != nil {
		return nil, fmt.Errorf("patch embedding: %w", err)
	}
	if err := be.Add(p.x, p.x, v.pos); err != nil {
		return nil, fmt.Errorf("position embedding: %w", err)
	}
	for i := range v.layers {
		if err := v.encoderLayer(m.mm, &v.layers[i], p); err != nil {
			return nil, fmt.Errorf("vision layer %d: %w", i, err)
		}
	}
	// The "patch" strategy drops row 0: rows 1… of x as one column range.
	col0 := 0
	if v.dropFirst {
		col0 = d
	}
	if err := be.SliceCols(p.featsFlat, p.xFlat, col0); err != nil {
		return nil, fmt.Errorf("select feature rows: %w", err)
	}
	if err := m.mm.linear(m.conn.fc1, p.c1, p.feats); err != nil {
		return nil, fmt.Errorf("connector linear 0: %w", err)
	}
	if err := be.GELU(p.c1, p.c1, kernels.GELUErf); err != nil {
		return nil, fmt.Errorf("connector gelu: %w", err)
	}
	if err := m.mm.linear(m.conn.fc2, p.img, p.c1); err != nil {
		return nil, fmt.Errorf("connector linear 2: %w", err)
	}
	return p.img, nil
}

// encoderLayer is SigLIP's pre-norm block, in place on p.x:
// x += out_proj(attn(LN1(x))); x += fc2(gelu(fc1(LN2(x)))).
func (v *visionTower) encoderLayer(mm *products, l *visionLayer, p *visionPlan) error {
	be, d := mm.be, v.cfg.HiddenSize
	if err := l.ln1.apply(be, p.h, p.x); err != nil {
		return fmt.Errorf("layer_norm1: %w", err)
	}
	if err := mm.linear(l.qkv, p.qkv, p.h); err != nil {
		return fmt.Errorf("q/k/v projections: %w", err)
	}
	for i, t := range []kernels.Tensor{p.qf, p.kf, p.vf} {
		if err := be.SliceCols(t, p.qkv, i*d); err != nil {
			return fmt.Errorf("split q/k/v: %w", err)
		}
	}
	scale := float32(1 / math.Sqrt(float64(v.headDim)))
	if err := be.SoftmaxAttention(p.att, p.q, p.k, p.v, scale, false); err != nil {
		return fmt.Errorf("attention: %w", err)
	}
	if err := mm.linear(l.o, p.o, p.attFlat); err != nil {
		return fmt.Errorf("out_proj: %w", err)
	}
	if err := be.Add(p.x, p.x, p.o); err != nil {
		return fmt.Errorf("attention residual: %w", err)
	}
	if err := l.ln2.apply(be, p.h, p.x); err != nil {
		return fmt.Errorf("layer_norm2: %w", err)
	}
	if err := mm.linear(l.fc1, p.mid, p.h); err != nil {
		return fmt.Errorf("mlp.fc1: %w", err)
	}
	if err := be.GELU(p.mid, p.mid, v.act); err != nil {
		return fmt.Errorf("mlp gelu: %w", err)
	}
	if err := mm.linear(l.fc2, p.o, p.mid); err != nil {
		return fmt.Errorf("mlp.fc2: %w", err)
	}
	if err := be.Add(p.x, p.x, p.o); err != nil {
		return fmt.Errorf("mlp residual: %w", err)
	}
	return nil
}

// im2col lays the non-overlapping patch×patch blocks of an image
// [channels, size, size] out as rows (row-major over the ⌊size/patch⌋²
// grid; pixels past the last whole patch are unused, as by the conv), each
// row ordered like the conv weight [out, channels, patch, patch].
func im2col(pixels []float32, channels, size, patch int) []float32 {
	grid := size / patch
	cpp := channels * patch * patch
	out := make([]float32, grid*grid*cpp)
	for py := range grid {
		for px := range grid {
			row := out[(py*grid+px)*cpp:][:cpp]
			for c := range channels {
				for i := range patch {
					src := pixels[(c*size+py*patch+i)*size+px*patch:][:patch]
					copy(row[(c*patch+i)*patch:][:patch], src)
				}
			}
		}
	}
	return out
}
