package distill

import (
	"math"

	"github.com/matsurgery/matsurgery/formats"
)

// visionTower is the frozen SigLIP encoder up to the feature layer; it
// runs forward only.
type visionTower struct {
	cfg       formats.VisionConfig
	patch     linear    // [hidden, channels·patch²]: the stride-patch conv as a matrix
	pos       []float32 // [patches, hidden]
	layers    []visionLayer
	headDim   int
	act       geluKind
	eps       float64
	dropFirst bool // the "patch" strategy drops row 0
}

// visionLayer is one SigLIP pre-norm encoder layer.
type visionLayer struct {
	ln1, ln2 norm
	qkv, o   linear
	fc1, fc2 linear
}

// featureRows is the number of sequence rows one image becomes.
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

// features runs the tower on one normalised image [channels, size, size]
// and returns its feature rows [featureRows, vision hidden]: the patch
// embedding, the position embeddings, the encoder layers up to the
// feature layer (no post_layernorm) and, for the "patch" strategy, row 0
// dropped.
func (v *visionTower) features(p *pool, pixels []float32) []float32 {
	N, d := v.cfg.NumPatches(), v.cfg.HiddenSize
	x := make([]float32, N*d)
	v.patch.forward(p, x, im2col(pixels, v.cfg.NumChannels, v.cfg.ImageSize, v.cfg.PatchSize), N)
	for i := range x {
		x[i] += v.pos[i]
	}
	heads := d / v.headDim
	sh := attnShape{n: N, heads: heads, kvHeads: heads, headDim: v.headDim, stride: 3 * d, qOff: 0, kOff: d, vOff: 2 * d,
		scale: float32(1 / math.Sqrt(float64(v.headDim))), causal: false}
	h := make([]float32, N*d)
	qkv := make([]float32, N*3*d)
	att := make([]float32, N*d)
	o := make([]float32, N*d)
	mid := make([]float32, N*v.cfg.IntermediateSize)
	for _, l := range v.layers {
		l.ln1.forward(p, h, x, N, d)
		l.qkv.forward(p, qkv, h, N)
		attentionForward(p, sh, att, qkv, nil)
		l.o.forward(p, o, att, N)
		for i := range x {
			x[i] += o[i]
		}
		l.ln2.forward(p, h, x, N, d)
		l.fc1.forward(p, mid, h, N)
		geluForward(p, v.act, mid, mid)
		l.fc2.forward(p, o, mid, N)
		for i := range x {
			x[i] += o[i]
		}
	}
	if v.dropFirst {
		return x[d:]
	}
	return x
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
					copy(row[(c*patch+i)*patch:][:patch], pixels[(c*size+py*patch+i)*size+px*patch:][:patch])
				}
			}
		}
	}
	return out
}

// connector is mlp2x_gelu: Linear, exact-erf GELU, Linear. Its weights
// train unless the Student was loaded with a frozen connector.
type connector struct {
	fc1, fc2  trainableLinear
	trainable bool
}

// connectorActs are one image's connector activations.
type connectorActs struct {
	rows  int
	feats []float32 // tower features [rows, vision hidden]
	c1    []float32 // fc1 output [rows, hidden]
	g     []float32 // gelu(c1)
}

// forward writes the image's sequence rows img [rows, hidden].
func (c *connector) forward(p *pool, img, feats []float32, rows int) *connectorActs {
	a := &connectorActs{rows: rows, feats: feats}
	hid := c.fc1.w.Shape[0]
	a.c1 = make([]float32, rows*hid)
	c.fc1.forward(p, a.c1, feats, rows)
	a.g = make([]float32, rows*hid)
	geluForward(p, geluErf, a.g, a.c1)
	c.fc2.forward(p, img, a.g, rows)
	return a
}

// backward accumulates the connector's weight gradients given dimg (the
// tower is frozen: no input gradient).
func (c *connector) backward(p *pool, dimg []float32, a *connectorActs) {
	hid := c.fc1.w.Shape[0]
	dg := make([]float32, a.rows*hid)
	c.fc2.backward(p, dg, dimg, a.g, a.rows)
	geluBackward(p, geluErf, dg, dg, a.c1)
	c.fc1.backward(p, nil, dg, a.feats, a.rows)
}
