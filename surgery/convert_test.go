package surgery

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/initmap"
	"github.com/matsurgery/matsurgery/layout"
)

func convert(t testing.TB, o Options) (*Result, error) {
	t.Helper()
	if o.Init.DtMin == 0 {
		keep := o.Init.KeepBias
		dt := o.Init.DType
		o.Init = initmap.Defaults()
		o.Init.KeepBias, o.Init.DType = keep, dt
	}
	job, err := Prepare(o)
	if err != nil {
		return nil, err
	}
	defer job.Teacher.Close()
	return job.Run(context.Background())
}

func TestConvertAllFamilies(t *testing.T) {
	for _, tc := range []struct {
		fam    formats.Family
		dt     formats.DType
		shards int
	}{
		{formats.Phi, formats.BF16, 3},
		{formats.Qwen2, formats.F16, 1},
		{formats.Llama, formats.F32, 1},
	} {
		t.Run(string(tc.fam), func(t *testing.T) {
			teacher := makeTeacher(t, tc.fam, tc.dt, tc.shards, 1)
			out := filepath.Join(t.TempDir(), "hybrid")
			res, err := convert(t, Options{Teacher: teacher, Out: out, Ratio: 0.25, Seed: 5, Version: "test"})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(res.MambaLayers, []int{0, 4}) {
				t.Fatalf("mamba layers %v", res.MambaLayers)
			}
			checkHybrid(t, teacher, out, []int{0, 4}, tc.dt)
			var prov Provenance
			readJSON(t, filepath.Join(out, ProvenanceName), &prov)
			if hashes := fileHashes(t, teacher); !reflect.DeepEqual(prov.TeacherSHA, hashes) {
				t.Errorf("provenance sha256 %v, want %v", prov.TeacherSHA, hashes)
			}
			if prov.Seed != 5 || !reflect.DeepEqual(prov.NewLayers, []int{0, 4}) || prov.Init.Mapping["B"] != "k_proj" {
				t.Errorf("provenance %+v", prov)
			}
			tc2, _ := formats.Open(teacher)
			defer tc2.Close()
			hc, _ := formats.Open(out)
			defer hc.Close()
			if len(hc.Files) != len(tc2.Files) {
				t.Errorf("%d output shards, teacher has %d", len(hc.Files), len(tc2.Files))
			}
		})
	}
}

// checkHybrid verifies the surgery's promises on an output directory.
func checkHybrid(t *testing.T, teacherDir, outDir string, mamba []int, dt formats.DType) {
	t.Helper()
	teacher, err := formats.Open(teacherDir)
	if err != nil {
		t.Fatal(err)
	}
	defer teacher.Close()
	hybrid, err := formats.Open(outDir)
	if err != nil {
		t.Fatal(err)
	}
	defer hybrid.Close()
	cfg, _ := formats.ReadModelConfig(teacherDir)
	desc, _ := layout.For(cfg.Family)
	isMamba := map[int]bool{}
	for _, l := range mamba {
		isMamba[l] = true
	}
	// Untouched tensors bit-identical; attention of Mamba layers gone.
	for _, ti := range teacher.Tensors() {
		l := layout.LayerOf(ti.Name)
		_, present := hybrid.Tensor(ti.Name)
		if l >= 0 && isMamba[l] && strings.HasPrefix(ti.Name, layout.AttentionPrefix(l)) {
			if present {
				t.Errorf("%s still present", ti.Name)
			}
			continue
		}
		if !present {
			t.Errorf("%s missing from the hybrid", ti.Name)
			continue
		}
		if !bytes.Equal(mustRaw(t, teacher, ti.Name), mustRaw(t, hybrid, ti.Name)) {
			t.Errorf("%s differs from the teacher", ti.Name)
		}
	}
	tx := cfg.Text
	di, dxb := tx.NumHeads*tx.HeadDim, tx.NumKVHeads*tx.HeadDim
	rowBytes := tx.HiddenSize * dt.Size()
	for _, l := range mamba {
		in := mustRaw(t, hybrid, layout.MambaPrefix(l)+"in_proj.weight")
		q := mustRaw(t, teacher, desc.LayerTensor(l, layout.AttnQ, "weight"))
		k := mustRaw(t, teacher, desc.LayerTensor(l, layout.AttnK, "weight"))
		v := mustRaw(t, teacher, desc.LayerTensor(l, layout.AttnV, "weight"))
		o := mustRaw(t, teacher, desc.LayerTensor(l, layout.AttnO, "weight"))
		if !bytes.Equal(in[di*rowBytes:(di+dxb)*rowBytes], v) {
			t.Errorf("layer %d: x rows ≠ v_proj", l)
		}
		if !bytes.Equal(in[(di+dxb)*rowBytes:(di+2*dxb)*rowBytes], k) {
			t.Errorf("layer %d: B rows ≠ k_proj", l)
		}
		if !bytes.Equal(in[(di+2*dxb)*rowBytes:(2*di+2*dxb)*rowBytes], q) {
			t.Errorf("layer %d: C rows ≠ q_proj", l)
		}
		if !bytes.Equal(mustRaw(t, hybrid, layout.MambaPrefix(l)+"out_proj.weight"), o) {
			t.Errorf("layer %d: out_proj ≠ o_proj", l)
		}
	}
	// Configs: config.json unchanged, mamba_config.json consistent, side files copied.
	for _, name := range []string{"config.json", "tokenizer.json"} {
		a, _ := os.ReadFile(filepath.Join(teacherDir, name))
		b, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not copied unchanged (%v)", name, err)
		}
	}
	mc, ok, err := formats.ReadMambaConfig(outDir)
	if err != nil || !ok {
		t.Fatalf("mamba_config.json: %v %v", ok, err)
	}
	if !reflect.DeepEqual(mc.MambaLayers(), mamba) || mc.DState != tx.HeadDim || mc.NGroups != tx.NumHeads ||
		mc.DInner != di || mc.DXB != dxb || mc.DModel != tx.HiddenSize {
		t.Errorf("mamba_config.json %+v inconsistent with layers %v and config %+v", mc, mamba, tx)
	}
	// No temporaries left beside the output.
	entries, _ := os.ReadDir(filepath.Dir(outDir))
	for _, e := range entries {
		if strings.Contains(e.Name(), ".partial-") || strings.Contains(e.Name(), ".old-") {
			t.Errorf("temporary %s left behind", e.Name())
		}
	}
	files, _ := os.ReadDir(outDir)
	for _, e := range files {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary %s left in the output", e.Name())
		}
	}
}

func TestConvertDeterministic(t *testing.T) {
	teacher := makeTeacher(t, formats.Phi, formats.BF16, 2, 3)
	base := t.TempDir()
	run := func(name string, seed uint64) map[string]string {
		out := filepath.Join(base, name)
		if _, err := convert(t, Options{Teacher: teacher, Out: out, Ratio: 0.5, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		return fileHashes(t, out)
	}
	a, b, c := run("a", 11), run("b", 11), run("c", 12)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("same seed, different files:\n%v\n%v", a, b)
	}
	// Another seed changes only the random parts.
	ha, _ := formats.Open(filepath.Join(base, "a"))
	defer ha.Close()
	hc, _ := formats.Open(filepath.Join(base, "c"))
	defer hc.Close()
	randomParts := map[string]bool{"in_proj.weight": true, "conv1d.weight": true, "conv1d.bias": true, "dt_bias": true, "A_log": true}
	for _, ti := range ha.Tensors() {
		same := bytes.Equal(mustRaw(t, ha, ti.Name), mustRaw(t, hc, ti.Name))
		suffix := ti.Name[strings.LastIndex(ti.Name, "mamba.")+len("mamba."):]
		random := strings.Contains(ti.Name, ".mamba.") && randomParts[suffix]
		if random == same {
			t.Errorf("%s: random part %v, but same bytes across seeds %v", ti.Name, random, same)
		}
	}
	if c["config.json"] != a["config.json"] {
		t.Error("config.json depends on the seed")
	}
}

func TestConvertHybridFurther(t *testing.T) {
	teacher := makeTeacher(t, formats.Llama, formats.BF16, 1, 4)
	base := t.TempDir()
	q := filepath.Join(base, "q")
	if _, err := convert(t, Options{Teacher: teacher, Out: q, Ratio: 0.25, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	h := filepath.Join(base, "h")
	res, err := convert(t, Options{Teacher: q, Out: h, Ratio: 0.5, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res.NewLayers, []int{2, 6}) || !reflect.DeepEqual(res.MambaLayers, []int{0, 2, 4, 6}) {
		t.Fatalf("new %v, all %v", res.NewLayers, res.MambaLayers)
	}
	checkHybrid(t, teacher, h, []int{0, 2, 4, 6}, formats.BF16)
	var prov Provenance
	readJSON(t, filepath.Join(h, ProvenanceName), &prov)
	if len(prov.Parent) == 0 {
		t.Error("provenance of a further conversion lacks its parent")
	}
	_, err = convert(t, Options{Teacher: q, Out: filepath.Join(base, "again"), Ratio: 0.25})
	if err == nil || !strings.Contains(err.Error(), "nothing to convert") {
		t.Errorf("converting the same layers again: %v", err)
	}
	_, err = convert(t, Options{Teacher: q, Out: filepath.Join(base, "other"), Layers: []int{1}})
	if err == nil || !strings.Contains(err.Error(), "already a Mamba layer") {
		t.Errorf("a plan dropping existing Mamba layers: %v", err)
	}
}

func TestConvertKeepBias(t *testing.T) {
	teacher := makeTeacher(t, formats.Phi, formats.F32, 1, 6)
	out := filepath.Join(t.TempDir(), "h")
	if _, err := convert(t, Options{Teacher: teacher, Out: out, Layers: []int{3}, Init: initmap.Options{KeepBias: true}}); err != nil {
		t.Fatal(err)
	}
	tc, _ := formats.Open(teacher)
	defer tc.Close()
	hc, _ := formats.Open(out)
	defer hc.Close()
	if !bytes.Equal(mustRaw(t, hc, layerName(3, "mamba.out_proj.bias")), mustRaw(t, tc, layerName(3, "self_attn.dense.bias"))) {
		t.Error("out_proj.bias ≠ dense.bias")
	}
	mc, _, _ := formats.ReadMambaConfig(out)
	if !mc.IsBias {
		t.Error("is_bias not recorded")
	}
}

func TestConvertErrorsLeaveNothing(t *testing.T) {
	teacher := makeTeacher(t, formats.Phi, formats.BF16, 2, 7)
	shards, _ := filepath.Glob(filepath.Join(teacher, "model-*-of-*.safetensors"))
	if len(shards) < 2 {
		t.Fatalf("teacher has shards %v", shards)
	}
	first, last := filepath.Base(shards[0]), filepath.Base(shards[len(shards)-1])
	copyDir := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "teacher")
		os.MkdirAll(dst, 0o755)
		entries, _ := os.ReadDir(teacher)
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(teacher, e.Name()))
			os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
		}
		return dst
	}
	for name, tc := range map[string]struct {
		mutate func(t *testing.T, dir string)
		opts   Options
		want   string
	}{
		"bad ratio":   {nil, Options{Ratio: 2}, "(0, 1]"},
		"no plan":     {nil, Options{}, "exactly one"},
		"two plans":   {nil, Options{Ratio: 0.25, Layers: []int{1}}, "exactly one"},
		"layer range": {nil, Options{Layers: []int{8}}, "out of range"},
		"preset 32":   {nil, Options{Preset: "matvlm-25"}, "32-layer"},
		"unknown family": {func(t *testing.T, d string) {
			os.WriteFile(filepath.Join(d, "config.json"), []byte(`{"llm_model_name_or_path": "mistral"}`), 0o644)
		}, Options{Ratio: 0.25}, "supported: phi, qwen2, llama"},
		"missing shard": {func(t *testing.T, d string) { os.Remove(filepath.Join(d, last)) }, Options{Ratio: 0.25}, last},
		"truncated shard": {func(t *testing.T, d string) {
			p := filepath.Join(d, first)
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-10)
		}, Options{Ratio: 0.25}, first},
		"corrupt header": {func(t *testing.T, d string) {
			p := filepath.Join(d, first)
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte("{{{{"), 8)
			f.Close()
		}, Options{Ratio: 0.25}, first},
		"no config": {func(t *testing.T, d string) { os.Remove(filepath.Join(d, "config.json")) }, Options{Ratio: 0.25}, "config.json"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := teacher
			if tc.mutate != nil {
				dir = copyDir(t)
				tc.mutate(t, dir)
			}
			before := fileHashes(t, dir)
			out := filepath.Join(t.TempDir(), "out")
			o := tc.opts
			o.Teacher, o.Out = dir, out
			_, err := convert(t, o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output %s exists after a failed conversion", out)
			}
			if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
				t.Errorf("left behind: %v", entries)
			}
			if !reflect.DeepEqual(before, fileHashes(t, dir)) {
				t.Error("the teacher was modified")
			}
		})
	}
}

func TestConvertRefusesNonEmptyOut(t *testing.T) {
	teacher := makeTeacher(t, formats.Qwen2, formats.BF16, 1, 8)
	out := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(out, 0o755)
	os.WriteFile(filepath.Join(out, "keep.txt"), []byte("mine"), 0o644)
	_, err := convert(t, Options{Teacher: teacher, Out: out, Ratio: 0.25})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty out: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "keep.txt")); string(b) != "mine" {
		t.Fatal("existing output touched")
	}
	// Even --force does not replace a directory that holds no checkpoint.
	if _, err := convert(t, Options{Teacher: teacher, Out: out, Ratio: 0.25, Force: true}); err == nil || !strings.Contains(err.Error(), "holds no checkpoint") {
		t.Fatalf("--force over an unrelated directory: %v", err)
	}
	// --force replaces an earlier result.
	os.WriteFile(filepath.Join(out, "config.json"), []byte("{}"), 0o644)
	if _, err := convert(t, Options{Teacher: teacher, Out: out, Ratio: 0.25, Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "keep.txt")); !os.IsNotExist(err) {
		t.Error("--force kept the old content")
	}
	checkHybrid(t, teacher, out, []int{0, 4}, formats.BF16)
	if _, err := convert(t, Options{Teacher: teacher, Out: filepath.Join(teacher, "sub"), Ratio: 0.25}); err == nil {
		t.Error("output inside the teacher accepted")
	}
}

func TestConvertCancelledLeavesNothing(t *testing.T) {
	teacher := makeTeacher(t, formats.Phi, formats.BF16, 1, 9)
	out := filepath.Join(t.TempDir(), "out")
	o := Options{Teacher: teacher, Out: out, Ratio: 0.25, Init: initmap.Defaults()}
	o.Init.DType = ""
	job, err := Prepare(o)
	if err != nil {
		t.Fatal(err)
	}
	defer job.Teacher.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := job.Run(ctx); err == nil {
		t.Fatal("cancelled run succeeded")
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}
