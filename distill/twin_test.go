package distill

import (
	"encoding/binary"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/kernels/reference"
)

const (
	fixtures  = "../testdata/fixtures"
	goldenDir = "../testdata/golden/model"
)

// golden is one golden file of float64 tensors (testdata/golden/model).
type golden struct {
	t  testing.TB
	ck *formats.Checkpoint
}

func openGolden(t testing.TB, name string) *golden {
	t.Helper()
	ck, err := formats.Open(filepath.Join(goldenDir, name+".safetensors"))
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	t.Cleanup(func() { ck.Close() })
	return &golden{t: t, ck: ck}
}

func (g *golden) f64(name string) []float64 {
	g.t.Helper()
	ti, ok := g.ck.Tensor(name)
	if !ok || ti.DType != formats.F64 {
		g.t.Fatalf("golden tensor %s: missing or not F64", name)
	}
	raw, err := g.ck.Raw(name)
	if err != nil {
		g.t.Fatalf("golden tensor %s: %v", name, err)
	}
	out := make([]float64, len(raw)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return out
}

func (g *golden) f32(name string) []float32 { return narrow(g.f64(name)) }

func (g *golden) ids(name string) []int {
	g.t.Helper()
	raw, err := g.ck.Raw(name)
	if err != nil {
		g.t.Fatalf("golden tensor %s: %v", name, err)
	}
	out := make([]int, len(raw)/8)
	for i := range out {
		out[i] = int(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	}
	return out
}

// loadStudent loads a fixture as a Student.
func loadStudent(t testing.TB, dir string, opts Options) *Student {
	t.Helper()
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(fixtures, dir)
	}
	s, err := LoadStudent(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// studentTwin is a float64 twin of a Student written with kernels/reference
// operations: frozen weights copied once, trainable ones as float64 copies
// that a gradient check perturbs (inputs pairs each with its Param's Grad).
type studentTwin struct {
	t      testing.TB
	s      *Student
	embed  *reference.Array
	conn   [2]linTwin
	layers []layerTwin
	final  normTwin
	head   linTwin
	inputs []gradInput
	// drop holds residual dropout's masks as multipliers (0 or 1/(1−P)),
	// by layer and branch (dropMixer…dropBranchMLP); none: no dropout.
	drop map[[2]int][]float64
}

// maskTwin widens a dropout mask into its multipliers.
func maskTwin(m *dropMask) []float64 {
	out := make([]float64, m.n*m.d)
	for i := range m.n {
		for j := range m.d {
			if m.bits[i*m.words+j/64]>>(j%64)&1 != 0 {
				out[i*m.d+j] = float64(m.scale)
			}
		}
	}
	return out
}

// holdMasks makes the twin apply the masks a saved Pass drew.
func (tw *studentTwin) holdMasks(p *Pass) {
	tw.drop = map[[2]int][]float64{}
	add := func(l, branch int, m *dropMask) {
		if m != nil {
			tw.drop[[2]int{l, branch}] = maskTwin(m)
		}
	}
	for l, a := range p.layers {
		add(l, dropMixer, a.dropMix)
		add(l, dropMLP, a.dropMLP)
	}
	for l, a := range p.branches {
		add(l, dropBranchMixer, a.dropMix)
		add(l, dropBranchMLP, a.dropMLP)
	}
}

// masked multiplies v [1, n, d] by the mask of (l, branch), if any.
func (tw *studentTwin) masked(v *reference.Array, l, branch int) *reference.Array {
	m, ok := tw.drop[[2]int{l, branch}]
	if !ok {
		return v
	}
	return must(tw.t)(reference.Mul(v, arr(tw.t, m, v.Shape...)))
}

type linTwin struct{ w, b *reference.Array }

type normTwin struct {
	w, b *reference.Array
	rms  bool
	eps  float64
}

type layerTwin struct {
	in, post              normTwin
	qkv, o, up, down      linTwin
	mixer                 *mixerTwin
	parallel, gated, attn bool
}

func matrixArray(t testing.TB, m matrix) *reference.Array {
	v := make([]float64, m.rows*m.cols)
	if m.bf16 == nil {
		for i, x := range m.f32 {
			v[i] = float64(x)
		}
	} else {
		for i, b := range m.bf16 {
			v[i] = reference.BF16Value(b)
		}
	}
	return arr(t, v, m.rows, m.cols)
}

func vecArray(t testing.TB, v []float32) *reference.Array {
	if v == nil {
		return nil
	}
	return arr(t, widen(v), len(v))
}

func newStudentTwin(t testing.TB, s *Student) *studentTwin {
	tw := &studentTwin{t: t, s: s, embed: matrixArray(t, s.embed)}
	for i, l := range []trainableLinear{s.conn.fc1, s.conn.fc2} {
		w := widen(l.w.Data)
		tw.conn[i].w = arr(t, w, l.w.Shape...)
		if s.conn.trainable {
			tw.inputs = append(tw.inputs, gradInput{l.w.Name, w, l.w.Grad})
		}
		if l.b != nil {
			b := widen(l.b.Data)
			tw.conn[i].b = arr(t, b, l.b.Shape...)
			if s.conn.trainable {
				tw.inputs = append(tw.inputs, gradInput{l.b.Name, b, l.b.Grad})
			}
		}
	}
	nt := func(n norm) normTwin {
		return normTwin{w: vecArray(t, n.w), b: vecArray(t, n.b), rms: n.rms, eps: n.eps}
	}
	lt := func(l linear) linTwin {
		if l.w.rows == 0 {
			return linTwin{}
		}
		return linTwin{w: matrixArray(t, l.w), b: vecArray(t, l.b)}
	}
	for _, l := range s.layers {
		ly := layerTwin{in: nt(l.inNorm), qkv: lt(l.qkv), o: lt(l.o), up: lt(l.up), down: lt(l.down),
			parallel: s.sizes.parallel, gated: s.sizes.gated, attn: l.mixer == nil}
		if !s.sizes.parallel {
			ly.post = nt(l.postNorm)
		}
		if l.mixer != nil {
			ly.mixer = newMixerTwin(t, l.mixer)
			tw.inputs = append(tw.inputs, ly.mixer.inputs...)
		}
		tw.layers = append(tw.layers, ly)
	}
	tw.final = nt(s.final)
	tw.head = lt(s.head)
	return tw
}

// apply is x·wᵀ (+b) in float64: reference.MatMul's sum, with the rows of
// x and w walked contiguously (the twins evaluate it hundreds of times).
func (l linTwin) apply(t testing.TB, x *reference.Array) *reference.Array {
	k := x.Shape[len(x.Shape)-1]
	n, m := l.w.Shape[0], x.Len()/k
	if l.w.Shape[1] != k {
		t.Fatalf("linear: input %v, weight %v", x.Shape, l.w.Shape)
	}
	y := reference.New(append(slices.Clone(x.Shape[:len(x.Shape)-1]), n)...)
	for i := range m {
		xr := x.Data[i*k : (i+1)*k]
		for j := range n {
			var s float64
			for p, w := range l.w.Data[j*k : (j+1)*k] {
				s += xr[p] * w
			}
			y.Data[i*n+j] = s
		}
	}
	if l.b != nil {
		y = must(t)(reference.AddBias(y, l.b))
	}
	return y
}

func (n normTwin) apply(t testing.TB, x *reference.Array) *reference.Array {
	if n.rms {
		return must(t)(reference.RMSNorm(x, n.w, n.eps))
	}
	return must(t)(reference.LayerNorm(x, n.w, n.b, n.eps))
}

// layer is decoder layer l on x [1, n, d].
func (tw *studentTwin) layer(l int, x *reference.Array) *reference.Array {
	return tw.layerDrop(l, x, false)
}

// layerDrop is decoder layer l on x [1, n, d], with the held dropout masks
// of the decoder's path or (branch) of the layer term's.
func (tw *studentTwin) layerDrop(l int, x *reference.Array, branch bool) *reference.Array {
	t, s, ly := tw.t, tw.s.sizes, tw.layers[l]
	bm, bf := dropMixer, dropMLP
	if branch {
		bm, bf = dropBranchMixer, dropBranchMLP
	}
	n := x.Shape[1]
	h := ly.in.apply(t, x)
	var mix *reference.Array
	if ly.attn {
		qkv := ly.qkv.apply(t, h)
		part := func(col0, heads int) *reference.Array {
			return must(t)(must(t)(reference.SliceCols(qkv, col0, heads*s.headDim)).Reshape(1, n, heads, s.headDim))
		}
		q := must(t)(reference.RoPE(part(0, s.heads), s.rotary, s.theta, 0))
		k := must(t)(reference.RoPE(part(s.dq(), s.kvHeads), s.rotary, s.theta, 0))
		v := part(s.dq()+s.dkv(), s.kvHeads)
		att := must(t)(reference.SoftmaxAttention(q, k, v, 1/math.Sqrt(float64(s.headDim)), true))
		mix = ly.o.apply(t, must(t)(att.Reshape(1, n, s.dq())))
	} else {
		mix = ly.mixer.forward(t, h)
	}
	mlp := func(src *reference.Array) *reference.Array {
		if ly.gated {
			gu := ly.up.apply(t, src)
			g := must(t)(reference.SliceCols(gu, 0, s.inter))
			u := must(t)(reference.SliceCols(gu, s.inter, s.inter))
			return ly.down.apply(t, must(t)(reference.Mul(reference.SiLU(g), u)))
		}
		return ly.down.apply(t, reference.GELU(ly.up.apply(t, src), s.act == geluTanh))
	}
	mix = tw.masked(mix, l, bm)
	if ly.parallel {
		return must(t)(reference.Add(must(t)(reference.Add(x, mix)), tw.masked(mlp(h), l, bf)))
	}
	mid := must(t)(reference.Add(x, mix))
	return must(t)(reference.Add(mid, tw.masked(mlp(ly.post.apply(t, mid)), l, bf)))
}

// embeds is the decoder input of ids, each image's rows the connector
// applied to that image's (fixed) tower features.
func (tw *studentTwin) embeds(ids []int, feats [][]float64) *reference.Array {
	t, s := tw.t, tw.s
	d, F := s.sizes.d, s.vision.featureRows()
	out := make([]float64, 0, s.SequenceLength(ids)*d)
	img := 0
	for _, id := range ids {
		if id != s.Config.ImageTokenIndex {
			out = append(out, tw.embed.Data[id*d:(id+1)*d]...)
			continue
		}
		f := arr(t, feats[img], 1, F, s.Config.Vision.HiddenSize)
		rows := tw.conn[1].apply(t, reference.GELU(tw.conn[0].apply(t, f), false))
		out = append(out, rows.Data...)
		img++
	}
	return arr(t, out, 1, len(out)/d, d)
}

// forward runs the decoder and the head on x [1, n, d], returning the
// logits and the outputs of the layers of layerIn run on those inputs.
func (tw *studentTwin) forward(x *reference.Array, layerIn map[int][]float64) (*reference.Array, map[int]*reference.Array) {
	for l := range tw.layers {
		x = tw.layer(l, x)
	}
	logits := tw.head.apply(tw.t, tw.final.apply(tw.t, x))
	outs := map[int]*reference.Array{}
	for l, in := range layerIn {
		outs[l] = tw.layerDrop(l, arr(tw.t, in, x.Shape...), true)
	}
	return logits, outs
}

// Independent float64 versions of the losses, straight from their
// definitions.

func softmax64(z []float64, temperature float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range z {
		mx = max(mx, v/temperature)
	}
	p := make([]float64, len(z))
	var s float64
	for i, v := range z {
		p[i] = math.Exp(v/temperature - mx)
		s += p[i]
	}
	for i := range p {
		p[i] /= s
	}
	return p
}

func klTwin(student, teacher []float64, vocab int, temperature float64, mask []bool) float64 {
	var sum float64
	count := 0
	for r := 0; r < len(student)/vocab; r++ {
		if mask != nil && !mask[r] {
			continue
		}
		count++
		q := softmax64(student[r*vocab:(r+1)*vocab], temperature)
		p := softmax64(teacher[r*vocab:(r+1)*vocab], temperature)
		for v := range p {
			sum += p[v] * math.Log(p[v]/q[v])
		}
	}
	if count == 0 {
		return 0
	}
	return temperature * temperature * sum / float64(count)
}

func ceTwin(logits []float64, vocab int, labels []int) float64 {
	var sum float64
	count := 0
	for r := 0; r+1 < len(labels); r++ {
		if labels[r+1] == IgnoreLabel {
			continue
		}
		count++
		sum -= math.Log(softmax64(logits[r*vocab:(r+1)*vocab], 1)[labels[r+1]])
	}
	if count == 0 {
		return 0
	}
	return sum / float64(count)
}

func distTwin(student, teacher []float64, form LayerDistance) float64 {
	var ss float64
	for i := range student {
		ss += (student[i] - teacher[i]) * (student[i] - teacher[i])
	}
	switch form {
	case L2Norm:
		return math.Sqrt(ss)
	case SquaredL2:
		return ss
	}
	return ss / float64(len(student))
}

// objective is the float64 twin of Objective.
func (tw *studentTwin) objective(cfg LossConfig, logits *reference.Array, outs map[int]*reference.Array, tg Targets) float64 {
	var total float64
	V := tw.s.sizes.vocab
	if cfg.Alpha != 0 {
		total += cfg.Alpha * klTwin(logits.Data, widen(tg.Logits), V, cfg.Temperature, tg.Mask)
	}
	if cfg.Gamma != 0 {
		total += cfg.Gamma * ceTwin(logits.Data, V, tg.Labels)
	}
	if cfg.Beta != 0 {
		for _, l := range slices.Sorted(maps.Keys(outs)) {
			total += cfg.Beta * distTwin(outs[l].Data, widen(tg.LayerOutputs[l]), cfg.Distance)
		}
	}
	return total
}
