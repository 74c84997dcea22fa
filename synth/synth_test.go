package synth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/layout"
	"github.com/matsurgery/matsurgery/progress"
)

func generate(t *testing.T, o Options) *Result {
	t.Helper()
	if o.Out == "" {
		o.Out = filepath.Join(t.TempDir(), "ckpt")
	}
	res, err := Generate(context.Background(), o)
	if err != nil {
		t.Fatalf("Generate(%s/%s): %v", o.Family, o.Preset, err)
	}
	return res
}

// checkRoundTrip reads a generated checkpoint back through formats and
// layout and checks it against the architecture it was made from.
func checkRoundTrip(t *testing.T, res *Result, wantDType formats.DType) {
	t.Helper()
	a, err := Lookup(res.Family, res.Preset)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := formats.ReadModelConfig(res.Out)
	if err != nil {
		t.Fatalf("ReadModelConfig: %v", err)
	}
	if cfg.Family != res.Family {
		t.Errorf("family %q, want %q", cfg.Family, res.Family)
	}
	if !reflect.DeepEqual(cfg.Text, a.Text) {
		t.Errorf("text_config parses as\n %+v\nwant\n %+v", cfg.Text, a.Text)
	}
	if !reflect.DeepEqual(cfg.Vision, a.Vision) {
		t.Errorf("vision_config parses as\n %+v\nwant\n %+v", cfg.Vision, a.Vision)
	}
	if cfg.HiddenSize != a.Text.HiddenSize || cfg.VocabSize != a.Text.VocabSize || cfg.ConnectorType != "mlp2x_gelu" ||
		cfg.ImageTokenIndex != -200 || cfg.PadTokenID == nil || *cfg.PadTokenID != a.PadTokenID {
		t.Errorf("top-level fields: %+v", cfg)
	}
	want, err := layout.Expected(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := formats.Open(res.Out)
	if err != nil {
		t.Fatalf("formats.Open: %v", err)
	}
	defer ck.Close()
	if ck.Len() != len(want) || res.Tensors != len(want) {
		t.Errorf("%d tensors in the files, %d reported, layout.Expected wants %d", ck.Len(), res.Tensors, len(want))
	}
	var params, nbytes int64
	for _, s := range want {
		info, ok := ck.Tensor(s.Name)
		if !ok {
			t.Errorf("tensor %s missing", s.Name)
			continue
		}
		if !reflect.DeepEqual(info.Shape, s.Shape) || info.DType != wantDType {
			t.Errorf("tensor %s: %s %v, want %s %v", s.Name, info.DType, info.Shape, wantDType, s.Shape)
		}
		params += info.NumElements()
		nbytes += info.Size
	}
	if params != res.Params || nbytes != res.Bytes {
		t.Errorf("result says %d params / %d bytes, files hold %d / %d", res.Params, res.Bytes, params, nbytes)
	}
	if got := ck.Metadata["format"]; got != "pt" {
		t.Errorf("metadata format %q, want pt", got)
	}
}

func TestTinyRoundTrip(t *testing.T) {
	for _, f := range formats.SupportedFamilies {
		for _, dt := range []formats.DType{"", formats.F32, formats.F16} {
			name := string(f) + "/" + string(dt)
			t.Run(name, func(t *testing.T) {
				res := generate(t, Options{Family: f, Preset: Tiny, Seed: 7, DType: dt})
				want := dt
				if want == "" {
					want = formats.BF16
				}
				checkRoundTrip(t, res, want)
				if !reflect.DeepEqual(res.Files, []string{"config.json", "model.safetensors"}) {
					t.Errorf("files %v", res.Files)
				}
			})
		}
	}
}

func TestSmallRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("writes ~500 MB")
	}
	for _, f := range formats.SupportedFamilies {
		t.Run(string(f), func(t *testing.T) {
			res := generate(t, Options{Family: f, Preset: Small, Seed: 3})
			if res.Bytes > 400e6 || res.Bytes < 10e6 {
				t.Errorf("small preset holds %d bytes, want a few hundred MB at most", res.Bytes)
			}
			checkRoundTrip(t, res, formats.BF16)
			checkValues(t, res.Out, 3, "language_model.model.embed_tokens.weight") // many chunks
		})
	}
}

// The tiny presets have the committed fixtures' shapes (so the fixture
// tokenizers fit them).
func TestTinyMatchesFixtures(t *testing.T) {
	for _, f := range formats.SupportedFamilies {
		dir := filepath.Join("..", "testdata", "fixtures", string(f)+"-tiny")
		fx, err := formats.ReadModelConfig(dir)
		if err != nil {
			t.Fatalf("fixture: %v", err)
		}
		a, err := Lookup(f, Tiny)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fx.Text, a.Text) {
			t.Errorf("%s: fixture text_config\n %+v\nsynth tiny\n %+v", f, fx.Text, a.Text)
		}
		if !reflect.DeepEqual(fx.Vision, a.Vision) {
			t.Errorf("%s: fixture vision_config\n %+v\nsynth tiny\n %+v", f, fx.Vision, a.Vision)
		}
	}
}

// The full presets are the published models' shapes; their config.json
// stores only what differs from the class defaults.
func TestFullPresets(t *testing.T) {
	type shape struct{ hidden, layers, heads, kv, inter, vocab int }
	want := map[formats.Family]shape{
		formats.Phi:   {2560, 32, 32, 32, 10240, 51200},
		formats.Qwen2: {896, 24, 14, 2, 4864, 151936},
		formats.Llama: {2048, 22, 32, 4, 5632, 32000},
	}
	for _, f := range formats.SupportedFamilies {
		a, cfg, specs, err := Plan(Options{Family: f, Preset: Full})
		if err != nil {
			t.Fatal(err)
		}
		tc := cfg.Text
		got := shape{tc.HiddenSize, tc.NumLayers, tc.NumHeads, tc.NumKVHeads, tc.IntermediateSize, tc.VocabSize}
		if got != want[f] {
			t.Errorf("%s full: %+v, want %+v", f, got, want[f])
		}
		v := cfg.Vision
		if v.HiddenSize != 1152 || v.NumLayers != 27 || v.NumHeads != 16 || v.IntermediateSize != 4304 || v.ImageSize != 384 || v.PatchSize != 14 || v.NumPatches() != 729 {
			t.Errorf("%s full: vision %+v is not SigLIP so400m-patch14-384", f, v)
		}
		if len(specs) == 0 || specs[0].DType != formats.BF16 {
			t.Errorf("%s full: default dtype %v", f, specs)
		}
		raw, err := a.ConfigJSON(formats.BF16)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Text   map[string]any `json:"text_config"`
			Vision map[string]any `json:"vision_config"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		switch f {
		case formats.Phi:
			// PhiConfig defaults: 32 heads, vocab 51200, gelu_new, eps 1e-5, θ 1e4, 2048 positions.
			for _, k := range []string{"num_attention_heads", "vocab_size", "hidden_act", "layer_norm_eps", "rope_theta", "max_position_embeddings", "num_key_value_heads"} {
				if _, ok := doc.Text[k]; ok {
					t.Errorf("phi text_config stores %s, which is the class default", k)
				}
			}
			if doc.Text["partial_rotary_factor"] != 0.4 || doc.Text["resid_pdrop"] != 0.1 || doc.Text["hidden_size"] != 2560.0 {
				t.Errorf("phi text_config lacks a non-default field: %v", doc.Text)
			}
			if tc.RotaryDim() != 32 || tc.HeadDim != 80 {
				t.Errorf("phi rotary dim %d head_dim %d", tc.RotaryDim(), tc.HeadDim)
			}
		case formats.Qwen2:
			if _, ok := doc.Text["vocab_size"]; ok {
				t.Errorf("qwen2 text_config stores vocab_size 151936, the class default")
			}
			if doc.Text["tie_word_embeddings"] != true || doc.Text["rope_theta"] != 1e6 || doc.Text["num_key_value_heads"] != 2.0 {
				t.Errorf("qwen2 text_config lacks a non-default field: %v", doc.Text)
			}
			if !tc.TieWordEmbeddings || tc.RopeTheta != 1e6 {
				t.Errorf("qwen2 parsed %+v", tc)
			}
		case formats.Llama:
			if doc.Text["rms_norm_eps"] != 1e-5 {
				t.Errorf("llama text_config lacks rms_norm_eps 1e-5: %v", doc.Text)
			}
		}
		if !bytes.Contains(raw, []byte(`"image_token_index": -200`)) || !bytes.Contains(raw, []byte(`"connector_type": "mlp2x_gelu"`)) {
			t.Errorf("%s: config.json misses the TinyLLaVA top-level fields", f)
		}
	}
}

// Full phi is sharded like the published checkpoint: two files under HF's
// 5 GB default plus an index. Planned only (no 6 GB written here).
func TestFullPhiSharding(t *testing.T) {
	_, _, specs, err := Plan(Options{Family: formats.Phi, Preset: Full})
	if err != nil {
		t.Fatal(err)
	}
	w, err := formats.NewWriter(t.TempDir(), specs, formats.WriterOptions{MaxShardSize: DefaultShardSize})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	names := w.FileNames()
	want := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", formats.IndexFileName}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("files %v, want %v", names, want)
	}
	total := w.TotalSize()
	if total < 6.0e9 || total > 6.6e9 {
		t.Errorf("full phi holds %d bytes, want ~6.2–6.4 GB", total)
	}
}

func sha256Files(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(data)
		out[e.Name()] = hex.EncodeToString(s[:])
	}
	return out
}

func TestDeterministic(t *testing.T) {
	base := Options{Family: formats.Phi, Preset: Tiny, Seed: 11, ShardSize: 400_000}
	a := generate(t, base)
	b1 := base
	b1.Workers = 1
	b := generate(t, b1)
	c1 := base
	c1.Workers = 5
	c := generate(t, c1)
	ha, hb, hc := sha256Files(t, a.Out), sha256Files(t, b.Out), sha256Files(t, c.Out)
	if len(ha) < 4 {
		t.Fatalf("expected a sharded checkpoint, got %v", ha)
	}
	if !reflect.DeepEqual(ha, hb) || !reflect.DeepEqual(ha, hc) {
		t.Errorf("same seed, different bytes:\n%v\n%v\n%v", ha, hb, hc)
	}
	d1 := base
	d1.Seed = 12
	hd := sha256Files(t, generate(t, d1).Out)
	for name, sum := range ha {
		if strings.HasSuffix(name, ".safetensors") && hd[name] == sum {
			t.Errorf("%s: seeds 11 and 12 give identical bytes", name)
		}
	}
	if hd["config.json"] != ha["config.json"] {
		t.Errorf("config.json depends on the seed")
	}
	ck, err := formats.Open(a.Out)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.Index == nil || len(ck.Files) < 3 {
		t.Errorf("sharded output: index %v, files %v", ck.Index, ck.Files)
	}
	checkRoundTrip(t, a, formats.BF16)
}

// checkValues compares a written tensor with its values redrawn from the
// streams, chunk by chunk, and checks its moments against the distribution.
func checkValues(t *testing.T, dir string, seed uint64, name string) {
	t.Helper()
	ck, err := formats.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	info, ok := ck.Tensor(name)
	if !ok {
		t.Fatalf("no tensor %s", name)
	}
	got, err := ck.Float32(name)
	if err != nil {
		t.Fatal(err)
	}
	d := DistributionOf(name, info.Shape)
	n := info.NumElements()
	want := make([]float32, ChunkElems)
	raw := make([]byte, ChunkElems*info.DType.Size())
	back := make([]float32, ChunkElems)
	var sum, sum2 float64
	for c := int64(0); c*ChunkElems < n; c++ {
		m := int(min(ChunkElems, n-c*ChunkElems))
		Fill(want[:m], seed, name, c, d)
		for _, v := range want[:m] {
			sum += float64(v)
			sum2 += float64(v) * float64(v)
		}
		// Round through the stored dtype as the writer did.
		if err := formats.EncodeFloat32(info.DType, want[:m], raw[:m*info.DType.Size()]); err != nil {
			t.Fatal(err)
		}
		if err := formats.DecodeFloat32(info.DType, raw[:m*info.DType.Size()], back[:m]); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < m; i++ {
			if math.Float32bits(got[c*ChunkElems+int64(i)]) != math.Float32bits(back[i]) {
				t.Fatalf("%s element %d: %g, want %g", name, c*ChunkElems+int64(i), got[c*ChunkElems+int64(i)], back[i])
			}
		}
	}
	mean := sum / float64(n)
	std := math.Sqrt(sum2/float64(n) - mean*mean)
	// Tolerances: 6 standard errors of the sample mean and deviation.
	if se := d.Std / math.Sqrt(float64(n)); math.Abs(mean-d.Mean) > 6*se {
		t.Errorf("%s: mean %g, want %g ± %g", name, mean, d.Mean, 6*se)
	}
	if se := d.Std / math.Sqrt(2*float64(n)); math.Abs(std-d.Std) > 6*se {
		t.Errorf("%s: std %g, want %g ± %g", name, std, d.Std, 6*se)
	}
}

func TestValues(t *testing.T) {
	res := generate(t, Options{Family: formats.Qwen2, Preset: Tiny, Seed: 5, DType: formats.F32})
	for _, name := range []string{
		"language_model.model.embed_tokens.weight",
		"language_model.model.layers.3.self_attn.q_proj.bias",
		"language_model.model.layers.0.input_layernorm.weight",
		"vision_tower._vision_tower.vision_model.encoder.layers.1.layer_norm2.weight",
		"vision_tower._vision_tower.vision_model.encoder.layers.1.layer_norm2.bias",
		"connector._connector.0.weight",
	} {
		checkValues(t, res.Out, 5, name)
	}
}

func TestDistributionOf(t *testing.T) {
	_, _, specs, err := Plan(Options{Family: formats.Phi, Preset: Tiny})
	if err != nil {
		t.Fatal(err)
	}
	var norms []string
	for _, s := range specs {
		if DistributionOf(s.Name, s.Shape).Mean == 1 {
			norms = append(norms, s.Name)
		}
	}
	// 3 SigLIP layers × 2, post_layernorm, head.layernorm, 8 input_layernorm, final_layernorm.
	if len(norms) != 17 {
		t.Errorf("%d norm weights: %v", len(norms), norms)
	}
	for _, n := range norms {
		if !strings.HasSuffix(n, "norm.weight") && !strings.Contains(n, "norm1.weight") && !strings.Contains(n, "norm2.weight") {
			t.Errorf("%s classified as a norm weight", n)
		}
	}
	for _, c := range []struct {
		name  string
		shape []int64
		mean  float64
	}{
		{"language_model.model.norm.weight", []int64{8}, 1},
		{"language_model.model.layers.0.mamba.norm.weight", []int64{8}, 1},
		{"language_model.model.final_layernorm.bias", []int64{8}, 0},
		{"vision_tower._vision_tower.vision_model.head.layernorm.weight", []int64{8}, 1},
		{"language_model.model.layers.0.self_attn.q_proj.weight", []int64{8, 8}, 0},
		{"language_model.model.embed_tokens.weight", []int64{8, 8}, 0},
	} {
		if got := DistributionOf(c.name, c.shape).Mean; got != c.mean {
			t.Errorf("%s: mean %g, want %g", c.name, got, c.mean)
		}
	}
}

// stream keeps tensors larger than a chunk in order, whatever the workers.
func TestStreamMultiChunk(t *testing.T) {
	specs := []formats.TensorSpec{
		{Name: "a.weight", DType: formats.BF16, Shape: []int64{5, ChunkElems/2 + 3}},
		{Name: "b.norm.weight", DType: formats.BF16, Shape: []int64{3}},
		{Name: "c.weight", DType: formats.BF16, Shape: []int64{ChunkElems + 1}},
	}
	var sums []string
	for _, workers := range []int{1, 2, 7} {
		dir := t.TempDir()
		w, err := formats.NewWriter(dir, specs, formats.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := stream(context.Background(), w, specs, 9, workers, progress.Silent{}); err != nil {
			t.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		for _, s := range specs {
			checkValues(t, dir, 9, s.Name)
		}
		sums = append(sums, sha256Files(t, dir)["model.safetensors"])
	}
	if sums[0] != sums[1] || sums[0] != sums[2] {
		t.Errorf("bytes depend on the worker count: %v", sums)
	}
}

func TestOutputSafety(t *testing.T) {
	parent := t.TempDir()
	out := filepath.Join(parent, "ckpt")
	o := Options{Family: formats.Llama, Preset: Tiny, Seed: 1, Out: out}
	first := generate(t, o)

	// Non-empty without force: refused, untouched.
	before := sha256Files(t, out)
	o.Seed = 2
	if _, err := Generate(context.Background(), o); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty output without force: err %v", err)
	}
	if !reflect.DeepEqual(before, sha256Files(t, out)) {
		t.Fatal("refused generation changed the output")
	}
	// With force: replaced.
	o.Force = true
	generate(t, o)
	if reflect.DeepEqual(before, sha256Files(t, out)) {
		t.Fatal("forced generation left the old checkpoint")
	}
	// Force does not replace a directory that holds no checkpoint.
	other := filepath.Join(parent, "notes")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "todo.txt"), []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	o.Out = other
	if _, err := Generate(context.Background(), o); err == nil || !strings.Contains(err.Error(), "holds no checkpoint") {
		t.Fatalf("force over a non-checkpoint directory: err %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(other, "todo.txt")); err != nil || string(data) != "keep me" {
		t.Fatalf("non-checkpoint directory changed: %q %v", data, err)
	}
	// A file is not a directory.
	o.Out = filepath.Join(first.Out, "config.json")
	if _, err := Generate(context.Background(), o); err == nil {
		t.Fatal("output that is a file accepted")
	}
	// A cancelled run leaves nothing behind.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	o.Out = filepath.Join(parent, "cancelled")
	if _, err := Generate(ctx, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: err %v", err)
	}
	entries, _ := os.ReadDir(parent)
	for _, e := range entries {
		if e.Name() != "ckpt" && e.Name() != "notes" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Family: "gemma", Preset: Tiny}, "unknown model family"},
		{Options{Family: formats.Phi, Preset: "huge"}, "unknown preset"},
		{Options{Family: formats.Phi, Preset: Tiny, DType: formats.I8}, "dtype"},
		{Options{Family: formats.Phi, Preset: Tiny, ShardSize: -1}, "shard size"},
	} {
		c.o.Out = filepath.Join(t.TempDir(), "x")
		if _, err := Generate(context.Background(), c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want one mentioning %q", c.o, err, c.want)
		}
		if _, err := os.Stat(c.o.Out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%+v: output created", c.o)
		}
	}
	if _, err := Generate(context.Background(), Options{Family: formats.Phi, Preset: Tiny}); err == nil {
		t.Error("empty output accepted")
	}
}

type countingProgress struct {
	total, added int64
	starts       int
	finished     bool
}

func (p *countingProgress) Start(_ string, total int64) { p.starts++; p.total = total }
func (p *countingProgress) Add(n int64)                 { p.added += n }
func (p *countingProgress) Finish()                     { p.finished = true }

func TestProgress(t *testing.T) {
	var p countingProgress
	res := generate(t, Options{Family: formats.Phi, Preset: Tiny, Progress: &p})
	if p.starts != 1 || !p.finished || p.total != res.Bytes || p.added != res.Bytes {
		t.Errorf("progress %+v, want total = added = %d", p, res.Bytes)
	}
}

func BenchmarkFill(b *testing.B) {
	vals := make([]float32, ChunkElems)
	raw := make([]byte, 2*ChunkElems)
	b.SetBytes(int64(len(raw)))
	for i := 0; b.Loop(); i++ {
		Fill(vals, 1, "x.weight", int64(i), Distribution{Std: Std})
		if err := formats.EncodeFloat32(formats.BF16, vals, raw); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGenerate measures bf16 bytes written per second (disk included)
// for the small qwen2 preset, in parallel over GOMAXPROCS workers.
func BenchmarkGenerate(b *testing.B) {
	_, _, specs, err := Plan(Options{Family: formats.Qwen2, Preset: Small})
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, s := range specs {
		total += numel(s.Shape) * 2
	}
	b.SetBytes(total)
	for b.Loop() {
		dir := b.TempDir()
		if _, err := Generate(context.Background(), Options{Family: formats.Qwen2, Preset: Small, Out: filepath.Join(dir, "x")}); err != nil {
			b.Fatal(err)
		}
	}
}

// cancelAfter cancels its context once some bytes have been reported.
type cancelAfter struct {
	countingProgress
	after  int64
	cancel context.CancelFunc
}

func (p *cancelAfter) Add(n int64) {
	p.countingProgress.Add(n)
	if p.added >= p.after {
		p.cancel()
	}
}

func TestCancelMidway(t *testing.T) {
	parent := t.TempDir()
	for _, workers := range []int{1, 3} {
		ctx, cancel := context.WithCancel(context.Background())
		p := &cancelAfter{after: 300_000, cancel: cancel}
		out := filepath.Join(parent, "x")
		_, err := Generate(ctx, Options{Family: formats.Phi, Preset: Tiny, Out: out, Workers: workers, ShardSize: 500_000, Progress: p})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("workers %d: err %v, want context.Canceled", workers, err)
		}
		if p.added >= 1533440 {
			t.Errorf("workers %d: cancelled run wrote everything (%d bytes)", workers, p.added)
		}
		if entries, _ := os.ReadDir(parent); len(entries) != 0 {
			t.Errorf("workers %d: left behind %v", workers, entries)
		}
	}
}
