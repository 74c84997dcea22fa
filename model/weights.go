package model

import (
	"fmt"

	"github.com/matsurgery/matsurgery/kernels"
)

// Read-only access to a loaded Model's weights and to its vision tower's
// last output, for code that computes beside the Model on the same backend:
// package distill's device student shares the teacher's frozen weights
// instead of uploading a second copy, and takes the tower's features from
// the teacher's run instead of running the tower twice. The tensors belong
// to the Model: never write or free them; they stay valid until Close.

// LinearWeights are a Linear's weight [out, in] (F32 or BF16, as Load
// uploaded it) and bias [out] (nil when the checkpoint has none).
type LinearWeights struct{ W, B kernels.Tensor }

// NormWeights are a LayerNorm's weight and bias, or an RMSNorm's weight
// (B nil, RMS set), with the epsilon the Model uses.
type NormWeights struct {
	W, B kernels.Tensor
	RMS  bool
	Eps  float32
}

// LayerWeights are one decoder layer's tensors other than a Mamba mixer's.
// QKV is q_proj | k_proj | v_proj stacked by rows (biases likewise, zeros
// for a part without one) and O the output projection; both are zero on a
// Mamba layer. Up is fc1, or gate_proj | up_proj stacked by rows (SwiGLU);
// Down is fc2 or down_proj. PostNorm is zero for Phi's parallel block.
type LayerWeights struct {
	InputNorm, PostNorm NormWeights
	QKV, O              LinearWeights
	Up, Down            LinearWeights
}

func (l linear) weights() LinearWeights { return LinearWeights{W: l.w, B: l.b} }

func (n norm) weights() NormWeights { return NormWeights{W: n.w, B: n.b, RMS: n.rms, Eps: n.eps} }

// Layer returns decoder layer l's weights.
func (m *Model) Layer(l int) (LayerWeights, error) {
	if err := m.alive(); err != nil {
		return LayerWeights{}, err
	}
	if l < 0 || l >= len(m.layers) {
		return LayerWeights{}, fmt.Errorf("model: layer %d: the model has %d layers", l, len(m.layers))
	}
	ly := m.layers[l]
	w := LayerWeights{InputNorm: ly.inNorm.weights(), Up: ly.up.weights(), Down: ly.down.weights()}
	if !m.sizes.parallel {
		w.PostNorm = ly.postNorm.weights()
	}
	if ly.mixer == nil {
		w.QKV, w.O = ly.qkv.weights(), ly.o.weights()
	}
	return w, nil
}

// Embedding returns the token embedding table [vocab, hidden].
func (m *Model) Embedding() kernels.Tensor { return m.embed }

// FinalNorm returns the decoder's final norm.
func (m *Model) FinalNorm() NormWeights { return m.final.weights() }

// Head returns the lm_head; its weight is the embedding table when the
// checkpoint ties them.
func (m *Model) Head() LinearWeights { return m.head.weights() }

// VisionFeatures returns the vision tower's output for the last image that
// ImageFeatures (or a forward pass over an image) ran: [1, ImageTokens(),
// vision hidden], the rows the connector reads (feature layer, "patch" row
// dropped). It is nil before any image has run, and is overwritten by the
// next image.
func (m *Model) VisionFeatures() kernels.Tensor {
	if m.vplan == nil || m.closed {
		return nil
	}
	return m.vplan.feats
}
