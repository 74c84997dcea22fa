package layout

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Plan says which decoder layers become Mamba-2 layers, and why.
type Plan struct {
	NumLayers   int    `json:"num_layers"`
	MambaLayers []int  `json:"mamba_layers"`
	Reason      string `json:"reason"` // "ratio 0.25", "layers 0,4,8", "preset matvlm-25"
}

// AttnLayers is the complement of MambaLayers.
func (p Plan) AttnLayers() []int {
	m := map[int]bool{}
	for _, l := range p.MambaLayers {
		m[l] = true
	}
	var out []int
	for l := 0; l < p.NumLayers; l++ {
		if !m[l] {
			out = append(out, l)
		}
	}
	return out
}

// IsMamba reports whether layer l is planned as Mamba.
func (p Plan) IsMamba(l int) bool {
	for _, x := range p.MambaLayers {
		if x == l {
			return true
		}
	}
	return false
}

// FromRatio spreads m = round(r·L) layers at equal intervals: layer ⌊i·L/m⌋
// for i = 0…m−1.
func FromRatio(r float64, numLayers int) (Plan, error) {
	if math.IsNaN(r) || r <= 0 || r > 1 {
		return Plan{}, fmt.Errorf("ratio %v: must be in (0, 1]", r)
	}
	if numLayers <= 0 {
		return Plan{}, fmt.Errorf("model has %d decoder layers", numLayers)
	}
	m := int(math.Round(r * float64(numLayers)))
	if m == 0 {
		return Plan{}, fmt.Errorf("ratio %v of %d layers rounds to 0 Mamba layers: use a larger ratio (at least %.4g)", r, numLayers, 0.5/float64(numLayers))
	}
	layers := make([]int, m)
	for i := range layers {
		layers[i] = i * numLayers / m
	}
	return Plan{NumLayers: numLayers, MambaLayers: layers, Reason: fmt.Sprintf("ratio %s (%d of %d layers, equal intervals)", strconv.FormatFloat(r, 'g', -1, 64), m, numLayers)}, nil
}

// FromLayers takes an explicit list.
func FromLayers(layers []int, numLayers int) (Plan, error) {
	if len(layers) == 0 {
		return Plan{}, fmt.Errorf("empty layer list")
	}
	seen := map[int]bool{}
	out := append([]int(nil), layers...)
	for _, l := range out {
		if l < 0 || l >= numLayers {
			return Plan{}, fmt.Errorf("layer %d is out of range: the model has layers 0…%d", l, numLayers-1)
		}
		if seen[l] {
			return Plan{}, fmt.Errorf("layer %d listed twice", l)
		}
		seen[l] = true
	}
	sort.Ints(out)
	return Plan{NumLayers: numLayers, MambaLayers: out, Reason: "layers " + joinInts(out)}, nil
}

// Presets are the reference code's hand-written lists for 32-layer models.
var Presets = map[string]struct {
	NumLayers int
	Layers    []int
}{
	"matvlm-12.5": {32, []int{0, 6, 12, 18}},
	"matvlm-25":   {32, []int{0, 4, 8, 12, 16, 20, 24, 28}},
	"matvlm-50":   {32, []int{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}},
}

// PresetNames lists the presets, sorted.
func PresetNames() []string {
	var s []string
	for k := range Presets {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// FromPreset takes one of the reference code's lists.
func FromPreset(name string, numLayers int) (Plan, error) {
	p, ok := Presets[name]
	if !ok {
		return Plan{}, fmt.Errorf("unknown preset %q; known: %s", name, strings.Join(PresetNames(), ", "))
	}
	if p.NumLayers != numLayers {
		return Plan{}, fmt.Errorf("preset %s is for %d-layer models; this model has %d layers: use --ratio or --layers", name, p.NumLayers, numLayers)
	}
	return Plan{NumLayers: numLayers, MambaLayers: append([]int(nil), p.Layers...), Reason: "preset " + name}, nil
}

// ParseLayers parses "0,4,8" (ranges "0-3" allowed).
func ParseLayers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, b, ok := strings.Cut(f, "-"); ok && a != "" {
			lo, err1 := strconv.Atoi(a)
			hi, err2 := strconv.Atoi(b)
			if err1 != nil || err2 != nil || hi < lo {
				return nil, fmt.Errorf("bad layer range %q", f)
			}
			for l := lo; l <= hi; l++ {
				out = append(out, l)
			}
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad layer %q", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty layer list %q", s)
	}
	return out, nil
}

// Extend plans the conversion of a hybrid whose layers existing are already
// Mamba: the target plan p must contain every existing Mamba layer (a plan
// cannot turn Mamba back into attention); it returns the layers still to
// convert, an error when there are none.
func (p Plan) Extend(existing []int) ([]int, error) {
	target := map[int]bool{}
	for _, l := range p.MambaLayers {
		target[l] = true
	}
	ex := map[int]bool{}
	for _, l := range existing {
		ex[l] = true
		if !target[l] {
			return nil, fmt.Errorf("layer %d is already a Mamba layer but the plan (%s: %s) does not include it; "+
				"a conversion only adds Mamba layers", l, p.Reason, joinInts(p.MambaLayers))
		}
	}
	var fresh []int
	for _, l := range p.MambaLayers {
		if !ex[l] {
			fresh = append(fresh, l)
		}
	}
	if len(fresh) == 0 {
		return nil, fmt.Errorf("every planned layer (%s) is already a Mamba layer: nothing to convert", joinInts(p.MambaLayers))
	}
	return fresh, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
