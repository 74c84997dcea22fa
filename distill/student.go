package distill

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/matsurgery/matsurgery/formats"
)

// Options tune LoadStudent.
type Options struct {
	// Workers bounds the goroutines of each operation (0: GOMAXPROCS).
	// Matrix products go through gonum's sgemm, which bounds its own
	// goroutines by GOMAXPROCS.
	Workers int
	// Chunk is the number of tokens between the scan states a forward pass
	// keeps for backward (default 64). Gradients do not depend on it: the
	// states inside a chunk are recomputed bit for bit.
	Chunk int
	// F32Weights widens frozen BF16 matrices to float32 at load. By default
	// they stay BF16 (half the memory) and are widened panel by panel.
	F32Weights bool
	// FreezeConnector leaves the mlp2x_gelu connector out of training (it
	// trains by default).
	FreezeConnector bool
	// Dropout is the residual dropout probability P in [0, 1) that Forward
	// applies to samples given an Input.Dropout key (training): each decoder
	// layer's token mixer output and MLP output are masked (kept with
	// probability 1−P, scaled by 1/(1−P)). 0, the default, is none; the
	// reference recipe's is the config's resid_pdrop (ResidDropout).
	Dropout float64
}

// ResidDropout is the reference's residual dropout probability for a
// checkpoint's config: resid_pdrop for Phi, none for the families that have
// no such setting (Llama, Qwen2).
func ResidDropout(cfg *formats.ModelConfig) float64 {
	if cfg.Family == formats.Phi {
		return cfg.Text.ResidPdrop
	}
	return 0
}

// DefaultChunk is Options.Chunk's default.
const DefaultChunk = 64

// Student is a hybrid TinyLLaVA checkpoint set up for distillation: its
// Mamba-2 mixers (and, by default, the connector) are trainable Params held
// as float32 master copies with gradient buffers; everything else (vision
// tower, embeddings, attention layers, norms, MLPs, head) is frozen and
// loaded like the teacher is. Batch size is 1. A Student is not safe for
// concurrent use.
type Student struct {
	Config *formats.ModelConfig
	Hybrid *formats.MambaConfig
	Dir    string

	opts   Options
	pool   *pool
	sizes  textSizes
	vision *visionTower
	conn   connector
	embed  matrix // [vocab, d]
	layers []*decoderLayer
	final  norm
	head   linear
	params []*Param
	rope   *ropeTable // the longest so far; shorter sequences read its first rows
}

// LoadStudent reads the hybrid checkpoint in dir (config.json,
// mamba_config.json and the safetensors files).
func LoadStudent(dir string, opts Options) (*Student, error) {
	if opts.Chunk == 0 {
		opts.Chunk = DefaultChunk
	}
	if opts.Chunk < 0 {
		return nil, fmt.Errorf("distill: load %s: chunk length %d must be positive", dir, opts.Chunk)
	}
	if err := checkDropout(opts.Dropout); err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	cfg, err := formats.ReadModelConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	hybrid, ok, err := formats.ReadMambaConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	if !ok {
		return nil, fmt.Errorf("distill: load %s: no %s: not a hybrid, nothing to distil into", dir, formats.MambaConfigName)
	}
	sizes, err := textSizesOf(cfg)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	ck, err := formats.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	defer ck.Close()
	s := &Student{Config: cfg, Hybrid: hybrid, Dir: dir, opts: opts, pool: newPool(opts.Workers), sizes: sizes}
	if err := s.load(&loader{ck: ck, f32: opts.F32Weights}); err != nil {
		return nil, fmt.Errorf("distill: load %s: %w", dir, err)
	}
	if s.conn.trainable {
		s.params = append(s.params, s.conn.fc1.w)
		if s.conn.fc1.b != nil {
			s.params = append(s.params, s.conn.fc1.b)
		}
		s.params = append(s.params, s.conn.fc2.w)
		if s.conn.fc2.b != nil {
			s.params = append(s.params, s.conn.fc2.b)
		}
	}
	for _, l := range s.layers {
		if l.mixer != nil {
			s.params = append(s.params, l.mixer.params()...)
		}
	}
	return s, nil
}

// Params lists the trainable tensors: the connector's (unless frozen),
// then each Mamba layer's mixer in layer order, each in checkpoint order.
// An optimiser updates Data in place; the next Forward uses the new values.
func (s *Student) Params() []*Param { return slices.Clone(s.params) }

// ZeroGrad clears every trainable tensor's gradient.
func (s *Student) ZeroGrad() {
	for _, p := range s.params {
		p.ZeroGrad()
	}
}

// NumLayers is the number of decoder layers.
func (s *Student) NumLayers() int { return len(s.layers) }

// MambaLayers lists the Mamba-2 layers.
func (s *Student) MambaLayers() []int {
	var out []int
	for i, l := range s.layers {
		if l.mixer != nil {
			out = append(out, i)
		}
	}
	return out
}

// IsMamba reports whether decoder layer l is a Mamba-2 layer.
func (s *Student) IsMamba(l int) bool { return l >= 0 && l < len(s.layers) && s.layers[l].mixer != nil }

// Hidden is the decoder's hidden size.
func (s *Student) Hidden() int { return s.sizes.d }

// Vocab is the vocabulary size (the logits' last dimension).
func (s *Student) Vocab() int { return s.sizes.vocab }

// ImageTokens is the number of sequence rows one image becomes.
func (s *Student) ImageTokens() int { return s.vision.featureRows() }

// PixelCount is the number of values of one image (channels × size²).
func (s *Student) PixelCount() int { return s.vision.pixelCount() }

// SequenceLength is the number of rows ids become once each image
// placeholder is replaced by ImageTokens() rows.
func (s *Student) SequenceLength(ids []int) int {
	n := len(ids)
	for _, id := range ids {
		if id == s.Config.ImageTokenIndex {
			n += s.vision.featureRows() - 1
		}
	}
	return n
}

// Input is one sample. Either IDs (token ids in which each image
// placeholder, config image_token_index, stands for one image of Pixels:
// [channels, size, size] per image, back to back, normalised) or Embeds
// (the decoder's input [L, hidden] directly) is given.
type Input struct {
	IDs    []int
	Pixels []float32
	Embeds []float32
	// LayerInputs maps Mamba layers to the teacher's input to that layer
	// ([L, hidden] each). For each, Forward also runs the student's layer
	// on it (Pass.LayerOutputs): the layer term of the loss compares that
	// with the teacher layer's output.
	LayerInputs map[int][]float32
	// Dropout, when set and Options.Dropout is not 0, makes this a training
	// forward with residual dropout whose masks are a pure function of the
	// key, the layer and the branch (the layer term's runs on LayerInputs
	// draw masks of their own). Nil: no dropout (evaluation).
	Dropout *DropoutKey
}

// Pass is one forward pass: its outputs and, when saved, the activations
// its Backward needs. Tensors are host slices owned by the Pass.
type Pass struct {
	Len          int       // sequence length L (image rows spliced in)
	Logits       []float32 // [L, vocab]
	LayerOutputs map[int][]float32

	student  *Student
	saved    bool
	done     bool
	rope     *ropeTable
	layers   []*layerActs
	head     *headActs
	images   []imageActs
	branches map[int]*layerActs
	dEmbeds  []float32
}

// imageActs record where an image's rows went and its connector's
// activations.
type imageActs struct {
	start int
	conn  *connectorActs
}

// EmbedsGrad is the gradient of the loss with respect to the decoder's
// input [L, hidden], through the logits path, once Backward has run with
// dlogits (nil before).
func (p *Pass) EmbedsGrad() []float32 { return p.dEmbeds }

// Forward runs the student on one sample and returns its Pass. With save
// the Pass keeps what Backward needs; without, it holds the outputs only.
func (s *Student) Forward(in Input, save bool) (*Pass, error) {
	embeds, images, err := s.embeds(in, save)
	if err != nil {
		return nil, fmt.Errorf("distill: forward: %w", err)
	}
	d := s.sizes.d
	n := len(embeds) / d
	for _, l := range slices.Sorted(maps.Keys(in.LayerInputs)) {
		if err := s.checkLayerInput(l, in.LayerInputs[l], n); err != nil {
			return nil, fmt.Errorf("distill: forward: %w", err)
		}
	}
	p := &Pass{Len: n, student: s, saved: save, rope: s.ropeFor(n), images: images}
	if save {
		p.layers = make([]*layerActs, len(s.layers))
	}
	var drop, branchDrop *layerDropout
	if in.Dropout != nil && s.opts.Dropout > 0 {
		drop = &layerDropout{key: *in.Dropout, prob: s.opts.Dropout}
		branchDrop = &layerDropout{key: *in.Dropout, prob: s.opts.Dropout, branch: true}
	}
	x := embeds
	for i, l := range s.layers {
		out := make([]float32, n*d)
		a := layerForward(s.pool, s.sizes, l, p.rope, out, x, n, save, drop)
		if save {
			p.layers[i] = a
		}
		x = out
	}
	p.Logits = make([]float32, n*s.sizes.vocab)
	ha := headForward(s.pool, s.sizes, s.final, s.head, p.Logits, x, n)
	if save {
		p.head = ha
	}
	if len(in.LayerInputs) > 0 {
		p.LayerOutputs = map[int][]float32{}
		p.branches = map[int]*layerActs{}
		for _, l := range slices.Sorted(maps.Keys(in.LayerInputs)) {
			xin := in.LayerInputs[l]
			out := make([]float32, n*d)
			a := layerForward(s.pool, s.sizes, s.layers[l], p.rope, out, xin, n, save, branchDrop)
			p.LayerOutputs[l] = out
			if save {
				p.branches[l] = a
			}
		}
	}
	return p, nil
}

// ForwardLayer runs decoder layer l alone on x [L, hidden] (positions
// 0…L−1) and returns its output: what Input.LayerInputs does, for
// inspection or evaluation (nothing is saved, no dropout).
func (s *Student) ForwardLayer(l int, x []float32) ([]float32, error) {
	if l < 0 || l >= len(s.layers) {
		return nil, fmt.Errorf("distill: forward layer %d: the model has %d layers", l, len(s.layers))
	}
	d := s.sizes.d
	if len(x) == 0 || len(x)%d != 0 {
		return nil, fmt.Errorf("distill: forward layer %d: input has %d values, want a positive multiple of hidden %d", l, len(x), d)
	}
	if err := checkFinite(x); err != nil {
		return nil, fmt.Errorf("distill: forward layer %d: input %w", l, err)
	}
	n := len(x) / d
	out := make([]float32, n*d)
	layerForward(s.pool, s.sizes, s.layers[l], s.ropeFor(n), out, x, n, false, nil)
	return out, nil
}

func (s *Student) checkLayerInput(l int, x []float32, n int) error {
	if !s.IsMamba(l) {
		return fmt.Errorf("layer input for layer %d: not a Mamba layer (Mamba layers: %v)", l, s.MambaLayers())
	}
	if len(x) != n*s.sizes.d {
		return fmt.Errorf("layer input for layer %d has %d values, want %d×%d", l, len(x), n, s.sizes.d)
	}
	if err := checkFinite(x); err != nil {
		return fmt.Errorf("layer input for layer %d: %w", l, err)
	}
	return nil
}

// embeds builds the decoder's input: the given embeddings, or token
// embeddings with each image's connector rows in place of its placeholder.
func (s *Student) embeds(in Input, save bool) ([]float32, []imageActs, error) {
	d := s.sizes.d
	if in.Embeds != nil {
		if in.IDs != nil || in.Pixels != nil {
			return nil, nil, errors.New("input has both embeddings and ids/pixels")
		}
		if len(in.Embeds) == 0 || len(in.Embeds)%d != 0 {
			return nil, nil, fmt.Errorf("input embeddings have %d values, want a positive multiple of hidden %d", len(in.Embeds), d)
		}
		if err := checkFinite(in.Embeds); err != nil {
			return nil, nil, fmt.Errorf("input embeddings: %w", err)
		}
		return slices.Clone(in.Embeds), nil, nil
	}
	if len(in.IDs) == 0 {
		return nil, nil, errors.New("no input ids or embeddings")
	}
	per, F := s.vision.pixelCount(), s.vision.featureRows()
	var starts []int
	n := 0
	for i, id := range in.IDs {
		switch {
		case id == s.Config.ImageTokenIndex:
			starts = append(starts, n)
			n += F
		case id < 0 || id >= s.sizes.vocab:
			return nil, nil, fmt.Errorf("input id %d (position %d) is outside the vocabulary [0, %d) and is not the image placeholder %d",
				id, i, s.sizes.vocab, s.Config.ImageTokenIndex)
		default:
			n++
		}
	}
	if len(in.Pixels) != len(starts)*per {
		return nil, nil, fmt.Errorf("%d image placeholders need %d pixel values (%d per image), got %d", len(starts), len(starts)*per, per, len(in.Pixels))
	}
	if err := checkFinite(in.Pixels); err != nil {
		return nil, nil, fmt.Errorf("pixels: %w", err)
	}
	out := make([]float32, n*d)
	row := 0
	for _, id := range in.IDs {
		if id == s.Config.ImageTokenIndex {
			row += F
			continue
		}
		s.embed.rowInto(out[row*d:(row+1)*d], id)
		row++
	}
	var images []imageActs
	for i, start := range starts {
		feats := s.vision.features(s.pool, in.Pixels[i*per:(i+1)*per])
		a := s.conn.forward(s.pool, out[start*d:(start+F)*d], feats, F)
		if save && s.conn.trainable {
			images = append(images, imageActs{start: start, conn: a})
		}
	}
	return out, images, nil
}

// rowInto writes row r of the matrix as float32 into dst.
func (m matrix) rowInto(dst []float32, r int) {
	if m.bf16 == nil {
		copy(dst, m.f32[r*m.cols:(r+1)*m.cols])
		return
	}
	m.widenRows(dst, r, r+1)
}

// ropeFor returns a rotary table covering n positions.
func (s *Student) ropeFor(n int) *ropeTable {
	if s.rope == nil || s.rope.n < n {
		s.rope = newRopeTable(n, s.sizes.rotary, s.sizes.theta)
	}
	return s.rope
}

// Backward backpropagates one saved Pass, accumulating into the Grad of
// every trainable Param (call ZeroGrad between steps; successive Backward
// calls add up, which is gradient accumulation). dlogits [L, vocab] is the
// gradient of the loss with respect to the logits (nil: the loss does not
// use them); dLayerOutputs maps layers of Input.LayerInputs to the gradient
// with respect to Pass.LayerOutputs (the layer term's), which flows into
// that layer's mixer only. A Pass is backpropagated at most once.
func (s *Student) Backward(p *Pass, dlogits []float32, dLayerOutputs map[int][]float32) error {
	switch {
	case p == nil:
		return errors.New("distill: backward: no pass")
	case p.student != s:
		return errors.New("distill: backward: the pass belongs to another student")
	case !p.saved:
		return errors.New("distill: backward: the pass was run without save")
	case p.done:
		return errors.New("distill: backward: the pass was already backpropagated")
	}
	n, d, V := p.Len, s.sizes.d, s.sizes.vocab
	if dlogits != nil && len(dlogits) != n*V {
		return fmt.Errorf("distill: backward: dlogits has %d values, want %d×%d", len(dlogits), n, V)
	}
	if dlogits != nil {
		if err := checkFinite(dlogits); err != nil {
			return fmt.Errorf("distill: backward: dlogits: %w", err)
		}
	}
	layers := slices.Sorted(maps.Keys(dLayerOutputs))
	for _, l := range layers {
		g := dLayerOutputs[l]
		if _, ok := p.branches[l]; !ok {
			return fmt.Errorf("distill: backward: gradient for layer %d's output, but the pass ran no layer input for it", l)
		}
		if len(g) != n*d {
			return fmt.Errorf("distill: backward: layer %d output gradient has %d values, want %d×%d", l, len(g), n, d)
		}
		if err := checkFinite(g); err != nil {
			return fmt.Errorf("distill: backward: layer %d output gradient: %w", l, err)
		}
	}
	p.done = true
	if dlogits != nil {
		dx := make([]float32, n*d)
		headBackward(s.pool, s.sizes, s.final, s.head, p.head, dx, dlogits, n)
		for i := len(s.layers) - 1; i >= 0; i-- {
			prev := make([]float32, n*d)
			layerBackward(s.pool, s.sizes, s.layers[i], p.layers[i], p.rope, prev, dx)
			dx = prev
		}
		p.dEmbeds = dx
		for _, im := range p.images {
			s.conn.backward(s.pool, dx[im.start*d:(im.start+im.conn.rows)*d], im.conn)
		}
	}
	for _, l := range layers {
		layerBackward(s.pool, s.sizes, s.layers[l], p.branches[l], p.rope, nil, dLayerOutputs[l])
	}
	return nil
}

// checkFinite reports the first NaN or infinite value.
func checkFinite(v []float32) error {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return fmt.Errorf("value %d is %g", i, x)
		}
	}
	return nil
}
