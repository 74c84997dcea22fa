package model

import (
	"fmt"
	"slices"

	"github.com/matsurgery/matsurgery/kernels"
)

// SequenceLength is the number of rows ids become once each image
// placeholder is replaced by ImageTokens() rows.
func (m *Model) SequenceLength(ids []int) int {
	n := len(ids)
	for _, id := range ids {
		if id == m.Config.ImageTokenIndex {
			n += m.vision.featureRows() - 1
		}
	}
	return n
}

// prepare checks the inputs and writes the spliced embeddings into the
// plan's stream[0]: token embeddings, with image i's connector rows in place
// of the i-th placeholder. pixels holds one [channels, size, size] image per
// placeholder, back to back.
func (m *Model) prepare(pixels []float32, ids []int) (*seqPlan, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("no input ids")
	}
	per, F := m.vision.pixelCount(), m.vision.featureRows()
	tok := make([]int32, 0, m.SequenceLength(ids))
	var starts []int
	for i, id := range ids {
		switch {
		case id == m.Config.ImageTokenIndex:
			starts = append(starts, len(tok))
			for range F {
				tok = append(tok, 0) // overwritten by the image rows
			}
		case id < 0 || id >= m.sizes.vocab:
			return nil, fmt.Errorf("input id %d (position %d) is outside the vocabulary [0, %d) and is not the image placeholder %d",
				id, i, m.sizes.vocab, m.Config.ImageTokenIndex)
		default:
			tok = append(tok, int32(id))
		}
	}
	if len(pixels) != len(starts)*per {
		return nil, fmt.Errorf("%d image placeholders need %d pixel values (%d per image), got %d", len(starts), len(starts)*per, per, len(pixels))
	}
	p, err := m.plan(len(tok))
	if err != nil {
		return nil, err
	}
	if err := m.rows.gather(p.stream[0], m.embed, tok); err != nil {
		return nil, fmt.Errorf("token embeddings: %w", err)
	}
	for i, start := range starts {
		img, err := m.imageFeatures(pixels[i*per : (i+1)*per])
		if err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
		if err := m.rows.copy(p.stream[0], start, img, 0, F); err != nil {
			return nil, fmt.Errorf("image %d: splice: %w", i, err)
		}
	}
	return p, nil
}

// Embed returns the decoder's input [1, L, hidden] for ids (with the image
// rows spliced in at the placeholders; see Forward). The tensor belongs to
// the Model.
func (m *Model) Embed(pixels []float32, ids []int) (kernels.Tensor, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	p, err := m.prepare(pixels, ids)
	if err != nil {
		return nil, fmt.Errorf("model: embed: %w", err)
	}
	return p.stream[0], nil
}

// Forward runs the whole model on one sample: ids are token ids in which
// each image placeholder (config image_token_index, −200) stands for one
// image of pixels ([channels, size, size] per image, back to back,
// normalised); positions run 0… over the spliced sequence. It returns the
// logits [1, L, vocab] (owned by the Model).
func (m *Model) Forward(pixels []float32, ids []int) (kernels.Tensor, error) {
	return m.ForwardHooked(pixels, ids, nil)
}

// ForwardHooked is Forward calling hook after every decoder layer.
func (m *Model) ForwardHooked(pixels []float32, ids []int, hook LayerHook) (kernels.Tensor, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	var logits kernels.Tensor
	err := kernels.RunPinned(m.be, func() error {
		p, err := m.prepare(pixels, ids)
		if err != nil {
			return err
		}
		logits, err = m.forwardStream(p, hook)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("model: forward: %w", err)
	}
	return logits, nil
}

// ForwardEmbeds runs the decoder on given input embeddings [1, L, hidden]
// (copied; positions 0…L−1) and returns the logits [1, L, vocab] (owned by
// the Model), calling hook after every layer when it is not nil.
func (m *Model) ForwardEmbeds(embeds kernels.Tensor, hook LayerHook) (kernels.Tensor, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	p, err := m.planFor("embeddings", embeds)
	if err != nil {
		return nil, fmt.Errorf("model: forward: %w", err)
	}
	// An exact copy (in place when embeds came from Embed).
	if err := m.be.Scale(p.stream[0], embeds, 1); err != nil {
		return nil, fmt.Errorf("model: forward: copy embeddings: %w", err)
	}
	logits, err := m.forwardStream(p, hook)
	if err != nil {
		return nil, fmt.Errorf("model: forward: %w", err)
	}
	return logits, nil
}

// planFor checks that t is a [1, L, hidden] F32 tensor and returns the
// plan for L.
func (m *Model) planFor(what string, t kernels.Tensor) (*seqPlan, error) {
	if t == nil {
		return nil, fmt.Errorf("%s: no tensor", what)
	}
	sh := t.Shape()
	if len(sh) != 3 || sh[0] != 1 || sh[1] <= 0 || sh[2] != m.sizes.d || t.DType() != kernels.F32 {
		return nil, fmt.Errorf("%s: %v %v tensor, want f32 [1, L, %d]", what, t.DType(), sh, m.sizes.d)
	}
	return m.plan(sh[1])
}

func (m *Model) forwardStream(p *seqPlan, hook LayerHook) (kernels.Tensor, error) {
	cur, err := m.runLayers(p, nil, hook)
	if err != nil {
		return nil, err
	}
	logits, err := m.logitsBuffer(p)
	if err != nil {
		return nil, err
	}
	if err := m.lmHead(p.h, p.stream[cur], logits); err != nil {
		return nil, err
	}
	return logits, nil
}

// RunLayer runs decoder layer l alone on in [1, L, hidden] (positions
// 0…L−1, no cache) and writes its output into out, a distinct [1, L,
// hidden] F32 tensor of the caller's. The distillation trainer feeds a
// student layer the teacher's input to that layer this way.
func (m *Model) RunLayer(l int, in, out kernels.Tensor) error {
	if err := m.alive(); err != nil {
		return err
	}
	if l < 0 || l >= len(m.layers) {
		return fmt.Errorf("model: run layer %d: the model has %d layers", l, len(m.layers))
	}
	p, err := m.planFor("layer input", in)
	if err != nil {
		return fmt.Errorf("model: run layer %d: %w", l, err)
	}
	if out == nil || !slices.Equal(out.Shape(), in.Shape()) || out.DType() != kernels.F32 {
		return fmt.Errorf("model: run layer %d: output must be an f32 tensor of the input's shape %v", l, in.Shape())
	}
	if err := m.layerForward(m.layers[l], p, in, out, nil); err != nil {
		return fmt.Errorf("model: run layer %d: %w", l, err)
	}
	return nil
}
