package verify

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/surgery"
)

var fixtures = map[string]string{
	"phi":   "../testdata/fixtures/phi-tiny",
	"qwen2": "../testdata/fixtures/qwen2-tiny",
	"llama": "../testdata/fixtures/llama-tiny",
}

func convert(t *testing.T, teacher string, ratio float64, dtype formats.DType) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "hybrid")
	init := initmap.Defaults()
	init.DType = dtype
	job, err := surgery.Prepare(surgery.Options{Teacher: teacher, Out: out, Ratio: ratio, Seed: 3, Init: init})
	if err != nil {
		t.Fatal(err)
	}
	defer job.Teacher.Close()
	if _, err := job.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out
}

func run(t *testing.T, hybrid, teacher string) *Report {
	t.Helper()
	be := cpu.New(0)
	defer be.Close()
	r, err := Run(context.Background(), Options{Hybrid: hybrid, Teacher: teacher, Backend: be, SeqLen: 100, Batch: 2, Chunk: 16, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVerifyPassesOnCorrectConversions(t *testing.T) {
	for fam, teacher := range fixtures {
		t.Run(fam, func(t *testing.T) {
			h := convert(t, teacher, 0.5, "")
			for _, te := range []string{teacher, ""} {
				r := run(t, h, te)
				if !r.Pass {
					var b strings.Builder
					r.WriteText(&b)
					t.Fatalf("verify failed (teacher %q):\n%s", te, b.String())
				}
				if len(r.Layers) != 4 {
					t.Errorf("%d layers checked, want 4", len(r.Layers))
				}
				for _, l := range r.Layers {
					// Same dtype: the identity holds to float32 rounding.
					if l.IdentitySeq.RelErr > 1e-5 || l.IdentityChunk.RelErr > 1e-5 || l.Scan.RelErr > 1e-5 {
						t.Errorf("layer %d: identity %.3g/%.3g, scan %.3g: above f32 rounding", l.Layer, l.IdentitySeq.RelErr, l.IdentityChunk.RelErr, l.Scan.RelErr)
					}
					if (te != "") != (l.DistanceRelErr != nil) {
						t.Errorf("layer %d: distance reported %v with teacher %q", l.Layer, l.DistanceRelErr != nil, te)
					}
				}
				if te != "" && r.Identical == 0 {
					t.Error("no tensor compared with the teacher")
				}
			}
		})
	}
}

func TestVerifyDTypeChangePassesAtRoundingLevel(t *testing.T) {
	// llama-tiny is f32; a bf16 hybrid rounds the slices: the identity holds at bf16 rounding.
	h := convert(t, fixtures["llama"], 0.25, formats.BF16)
	r := run(t, h, fixtures["llama"])
	for _, l := range r.Layers {
		if !l.IdentitySeq.Pass || l.IdentitySeq.RelErr < 1e-4 || l.IdentitySeq.Tol != 3e-2 {
			t.Errorf("layer %d: identity %.3g (tol %.g): want a bf16-level pass", l.Layer, l.IdentitySeq.RelErr, l.IdentitySeq.Tol)
		}
	}
}

// rewrite copies a checkpoint, letting edit change tensors' bytes or drop them (return nil).
func rewrite(t *testing.T, src string, edit func(name string, data []byte, c *formats.Checkpoint) []byte) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "broken")
	os.MkdirAll(dst, 0o755)
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") || e.Name() == "model.safetensors.index.json" {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
	}
	c, err := formats.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var specs []formats.TensorSpec
	data := map[string][]byte{}
	for _, ti := range c.Tensors() {
		b, err := c.Raw(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if b = edit(ti.Name, b, c); b == nil {
			continue
		}
		data[ti.Name] = b
		specs = append(specs, formats.TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
	}
	w, err := formats.NewWriter(dst, specs, formats.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if err := w.WriteBytes(s.Name, data[s.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestVerifyCatchesBrokenCheckpoints(t *testing.T) {
	teacher := fixtures["phi"] // MHA: K and Q have the same shape, so a swap is possible
	good := convert(t, teacher, 0.25, "")
	cfg, _ := formats.ReadModelConfig(teacher)
	d := cfg.Text.HiddenSize
	rowBytes := d * 2 // bf16
	di := cfg.Text.NumHeads * cfg.Text.HeadDim
	in4 := "language_model.model.layers.4.mamba.in_proj.weight"
	for name, tc := range map[string]struct {
		edit      func(name string, b []byte, c *formats.Checkpoint) []byte
		noTeacher bool
		want      string // in the first failure
	}{
		"K and Q swapped": {edit: func(n string, b []byte, _ *formats.Checkpoint) []byte {
			if n == in4 {
				b = append([]byte(nil), b...)
				kb := b[(2*di)*rowBytes : (3*di)*rowBytes] // B rows (d_xb = d_inner for MHA)
				qb := b[(3*di)*rowBytes : (4*di)*rowBytes] // C rows
				tmp := append([]byte(nil), kb...)
				copy(kb, qb)
				copy(qb, tmp)
			}
			return b
		}, want: "layer 4: identity"},
		"corrupted x slice": {edit: func(n string, b []byte, _ *formats.Checkpoint) []byte {
			if n == in4 {
				b = append([]byte(nil), b...)
				for i := di * rowBytes; i < (di+5)*rowBytes; i += 2 {
					b[i+1] ^= 0x40 // flip an exponent bit of five rows of x
				}
			}
			return b
		}, want: "layer 4: identity"},
		"missing layer tensor": {edit: func(n string, b []byte, _ *formats.Checkpoint) []byte {
			if n == "language_model.model.layers.0.mamba.dt_bias" {
				return nil
			}
			return b
		}, want: "layer 0: missing tensor"},
		"changed untouched tensor": {edit: func(n string, b []byte, _ *formats.Checkpoint) []byte {
			if n == "language_model.model.layers.5.mlp.fc1.weight" {
				b = append([]byte(nil), b...)
				b[10] ^= 1
			}
			return b
		}, want: "differs from the teacher"},
		"NaN in a mixer": {edit: func(n string, b []byte, _ *formats.Checkpoint) []byte {
			if n == "language_model.model.layers.0.mamba.A_log" {
				b = append([]byte(nil), b...)
				b[0], b[1] = 0xc0, 0x7f // bf16 NaN
			}
			return b
		}, noTeacher: true, want: "NaN"},
	} {
		t.Run(name, func(t *testing.T) {
			broken := rewrite(t, good, tc.edit)
			te := teacher
			if tc.noTeacher {
				te = ""
			}
			r := run(t, broken, te)
			if r.Pass {
				t.Fatal("verify passed a broken checkpoint")
			}
			if f := r.FirstFailure(); !strings.Contains(f, tc.want) {
				t.Errorf("first failure %q, want it to mention %q", f, tc.want)
			}
		})
	}
}

func TestVerifyCatchesInconsistentMambaConfig(t *testing.T) {
	teacher := fixtures["qwen2"]
	good := convert(t, teacher, 0.25, "")
	// A layer listed as Mamba that still holds attention (and has no mixer).
	p := filepath.Join(good, formats.MambaConfigName)
	b, _ := os.ReadFile(p)
	os.WriteFile(p, []byte(strings.Replace(string(b), "        1,\n", "", 1)), 0o644)
	r := run(t, good, teacher)
	if r.Pass || !strings.Contains(r.FirstFailure(), "layer 1") {
		t.Errorf("inconsistent mamba_config.json: pass %v, %q", r.Pass, r.FirstFailure())
	}
}

func TestVerifyRefusesATeacher(t *testing.T) {
	be := cpu.New(1)
	_, err := Run(context.Background(), Options{Hybrid: fixtures["phi"], Backend: be})
	if err == nil || !strings.Contains(err.Error(), "not a hybrid") {
		t.Errorf("verify of a plain teacher: %v", err)
	}
}

func TestAllFiniteRaw(t *testing.T) {
	for _, dt := range []formats.DType{formats.BF16, formats.F16, formats.F32, formats.F64, formats.F8E4M3} {
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			if dt == formats.F8E4M3 {
				continue // no encoder for F8: the decode path is covered by finite input below
			}
			v := []float32{1, -2.5, 0, bad, 3}
			b := make([]byte, len(v)*dt.Size())
			if dt == formats.F64 {
				for i, x := range v {
					binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(x)))
				}
			} else if err := formats.EncodeFloat32(dt, v, b); err != nil {
				t.Fatal(err)
			}
			if allFiniteRaw(dt, b) {
				t.Errorf("%s: %v judged finite", dt, bad)
			}
			if !allFiniteRaw(dt, b[:3*dt.Size()]) {
				t.Errorf("%s: finite values judged not finite", dt)
			}
		}
	}
	if !allFiniteRaw(formats.F8E4M3, []byte{0x38, 0x40}) || allFiniteRaw(formats.F8E4M3, []byte{0x7f}) {
		t.Error("F8_E4M3 finiteness")
	}
}

// The host reference equals the quadratic definition Σ_{s≤t} (q_t·k_s) v_s.
func TestLinearAttention64(t *testing.T) {
	B, L, H, Hkv, P := 2, 9, 4, 2, 3
	r := rand.New(rand.NewPCG(5, 5))
	gen := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	q, k, v := gen(B*L*H*P), gen(B*L*Hkv*P), gen(B*L*Hkv*P)
	got := linearAttention64(q, k, v, B, L, H, Hkv, P)
	for b := 0; b < B; b++ {
		for tt := 0; tt < L; tt++ {
			for h := 0; h < H; h++ {
				for i := 0; i < P; i++ {
					var want float64
					for s := 0; s <= tt; s++ {
						var dot float64
						for j := 0; j < P; j++ {
							dot += float64(q[((b*L+tt)*H+h)*P+j]) * float64(k[((b*L+s)*Hkv+h/2)*P+j])
						}
						want += dot * float64(v[((b*L+s)*Hkv+h/2)*P+i])
					}
					if g := got[((b*L+tt)*H+h)*P+i]; math.Abs(g-want) > 1e-12*(1+math.Abs(want)) {
						t.Fatalf("b%d t%d h%d i%d: %v, want %v", b, tt, h, i, g, want)
					}
				}
			}
		}
	}
}

// The word-at-a-time check finds a NaN or Inf in every lane position and
// never flags large finite values (bf16/f16 max, subnormals).
func TestAllFiniteRawLanes(t *testing.T) {
	for _, dt := range []formats.DType{formats.BF16, formats.F16} {
		base := []float32{65504, -65504, 6e-8, -1, 0, 1e-5, 3, 2048, 0.5}
		if dt == formats.BF16 {
			base[0], base[1] = 3.3e38, -3.3e38
		}
		b := make([]byte, len(base)*2)
		if err := formats.EncodeFloat32(dt, base, b); err != nil {
			t.Fatal(err)
		}
		if !allFiniteRaw(dt, b) {
			t.Fatalf("%s: finite values flagged", dt)
		}
		for pos := range base {
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
				v := append([]float32(nil), base...)
				v[pos] = bad
				formats.EncodeFloat32(dt, v, b)
				if allFiniteRaw(dt, b) {
					t.Errorf("%s: %v at position %d not found", dt, bad, pos)
				}
			}
		}
	}
}
