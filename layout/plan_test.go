package layout

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

func TestFromRatio(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		L    int
		want []int
	}{
		{0.25, 32, []int{0, 4, 8, 12, 16, 20, 24, 28}},
		{0.125, 32, []int{0, 8, 16, 24}},
		{0.5, 32, []int{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}},
		{1, 4, []int{0, 1, 2, 3}},
		{0.25, 24, []int{0, 4, 8, 12, 16, 20}},
		{0.25, 22, []int{0, 3, 7, 11, 14, 18}}, // round(5.5)=6 → ⌊i·22/6⌋
		{0.25, 8, []int{0, 4}},
		{0.5, 8, []int{0, 2, 4, 6}},
	} {
		p, err := FromRatio(tc.r, tc.L)
		if err != nil {
			t.Fatalf("FromRatio(%v, %d): %v", tc.r, tc.L, err)
		}
		if !reflect.DeepEqual(p.MambaLayers, tc.want) {
			t.Errorf("FromRatio(%v, %d) = %v, want %v", tc.r, tc.L, p.MambaLayers, tc.want)
		}
		if len(p.AttnLayers())+len(p.MambaLayers) != tc.L {
			t.Errorf("attention %v + mamba %v do not cover %d layers", p.AttnLayers(), p.MambaLayers, tc.L)
		}
	}
}

func TestFromRatioErrors(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		L    int
		want string
	}{
		{0, 32, "must be in (0, 1]"},
		{-0.25, 32, "must be in (0, 1]"},
		{1.5, 32, "must be in (0, 1]"},
		{math.NaN(), 32, "must be in (0, 1]"},
		{0.01, 32, "rounds to 0"},
		{0.25, 0, "decoder layers"},
	} {
		_, err := FromRatio(tc.r, tc.L)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromRatio(%v, %d): error %v, want one containing %q", tc.r, tc.L, err, tc.want)
		}
	}
}

func TestFromLayers(t *testing.T) {
	p, err := FromLayers([]int{8, 0, 4}, 32)
	if err != nil || !reflect.DeepEqual(p.MambaLayers, []int{0, 4, 8}) {
		t.Fatalf("FromLayers = %v, %v", p.MambaLayers, err)
	}
	for _, tc := range []struct {
		layers []int
		want   string
	}{
		{[]int{0, 32}, "out of range"},
		{[]int{-1}, "out of range"},
		{[]int{3, 3}, "twice"},
		{nil, "empty"},
	} {
		if _, err := FromLayers(tc.layers, 32); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromLayers(%v): error %v, want %q", tc.layers, err, tc.want)
		}
	}
}

func TestPresets(t *testing.T) {
	p, err := FromPreset("matvlm-12.5", 32)
	if err != nil || !reflect.DeepEqual(p.MambaLayers, []int{0, 6, 12, 18}) {
		t.Fatalf("matvlm-12.5 = %v, %v", p.MambaLayers, err)
	}
	p, err = FromPreset("matvlm-25", 32)
	r, _ := FromRatio(0.25, 32)
	if err != nil || !reflect.DeepEqual(p.MambaLayers, r.MambaLayers) {
		t.Fatalf("matvlm-25 = %v, want %v", p.MambaLayers, r.MambaLayers)
	}
	if _, err := FromPreset("matvlm-25", 24); err == nil || !strings.Contains(err.Error(), "32-layer") {
		t.Errorf("preset on a 24-layer model: %v", err)
	}
	if _, err := FromPreset("nope", 32); err == nil || !strings.Contains(err.Error(), "matvlm-12.5") {
		t.Errorf("unknown preset: %v", err)
	}
}

func TestParseLayers(t *testing.T) {
	got, err := ParseLayers("0, 4,8-10")
	if err != nil || !reflect.DeepEqual(got, []int{0, 4, 8, 9, 10}) {
		t.Fatalf("ParseLayers = %v, %v", got, err)
	}
	for _, s := range []string{"a", "3-1", "", ",", "1-x"} {
		if _, err := ParseLayers(s); err == nil {
			t.Errorf("ParseLayers(%q) accepted", s)
		}
	}
}

func TestExtend(t *testing.T) {
	half, _ := FromRatio(0.5, 32)
	quarter, _ := FromRatio(0.25, 32)
	fresh, err := half.Extend(quarter.MambaLayers)
	if err != nil || !reflect.DeepEqual(fresh, []int{2, 6, 10, 14, 18, 22, 26, 30}) {
		t.Fatalf("Extend = %v, %v", fresh, err)
	}
	if _, err := quarter.Extend(quarter.MambaLayers); err == nil || !strings.Contains(err.Error(), "nothing to convert") {
		t.Errorf("same plan again: %v", err)
	}
	other, _ := FromLayers([]int{1, 5}, 32)
	if _, err := other.Extend([]int{0}); err == nil || !strings.Contains(err.Error(), "already a Mamba layer") {
		t.Errorf("plan dropping a Mamba layer: %v", err)
	}
}

func TestLayerOf(t *testing.T) {
	for name, want := range map[string]int{
		"language_model.model.layers.12.self_attn.q_proj.weight": 12,
		"language_model.model.layers.0.mamba.A_log":              0,
		"language_model.model.embed_tokens.weight":               -1,
		"language_model.model.layers.x.foo":                      -1,
		"language_model.model.layers.7":                          -1,
	} {
		if got := LayerOf(name); got != want {
			t.Errorf("LayerOf(%q) = %d, want %d", name, got, want)
		}
	}
}
