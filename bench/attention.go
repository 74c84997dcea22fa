package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/matsurgery/matsurgery/kernels"
	"github.com/matsurgery/matsurgery/model"
)

// AttentionRow is the time of one layer's causal softmax attention forward
// alone at one context: the Backend.SoftmaxAttention call an attention
// layer's prefill makes, on q, k and v of the model's shapes — float32, or
// BF16 when the model runs in bf16 and the backend's attention takes BF16
// operands (as the model then calls it).
type AttentionRow struct {
	Context int `json:"context"`
	// Seconds is one call's time (after a warm-up call at the context).
	Seconds float64 `json:"seconds_per_layer"`
	// Layers is how many attention layers the model has: Layers·Seconds is
	// the attention's share of a prefill.
	Layers int `json:"attention_layers"`
}

// Attention times SoftmaxAttention on random q, k, v [1, n, heads,
// head_dim] (keys and values with the model's key/value heads) at each
// context, with scale 1/√head_dim and causal masking, as m's attention
// layers run it in a prefill.
func Attention(m *model.Model, ctxs []int, seed uint64) ([]AttentionRow, error) {
	t := m.Config.Text
	H, Hkv, P := t.NumHeads, t.NumKVHeads, t.HeadDim
	layers := m.NumLayers() - len(m.MambaLayers())
	be := m.Backend()
	r := rand.New(rand.NewPCG(seed, 29))
	scale := float32(1 / math.Sqrt(float64(P)))
	dt := kernels.F32
	if m.Precision() == model.PrecisionBF16 {
		dt = kernels.BF16
	}
	call := func(n int) (float64, error) {
		var owned []kernels.Tensor
		defer func() {
			for _, x := range owned {
				be.Free(x)
			}
		}()
		up := func(heads int) (kernels.Tensor, error) {
			v := make([]float32, n*heads*P)
			for i := range v {
				v[i] = float32(r.NormFloat64())
			}
			x, err := be.Upload(v, dt, 1, n, heads, P)
			if err == nil {
				owned = append(owned, x)
			}
			return x, err
		}
		q, err := up(H)
		if err != nil {
			return 0, err
		}
		k, err := up(Hkv)
		if err != nil {
			return 0, err
		}
		v, err := up(Hkv)
		if err != nil {
			return 0, err
		}
		out, err := be.Alloc(kernels.F32, 1, n, H, P)
		if err != nil {
			return 0, err
		}
		owned = append(owned, out)
		if err := be.Sync(); err != nil {
			return 0, err
		}
		// The first call compiles and sizes what this length needs.
		if err := be.SoftmaxAttention(out, q, k, v, scale, true); err != nil {
			return 0, err
		}
		if err := be.Sync(); err != nil {
			return 0, err
		}
		t0 := time.Now()
		if err := be.SoftmaxAttention(out, q, k, v, scale, true); err != nil {
			return 0, err
		}
		if err := be.Sync(); err != nil {
			return 0, err
		}
		return time.Since(t0).Seconds(), nil
	}
	_, err := call(16)
	if err != nil && dt == kernels.BF16 {
		dt = kernels.F32 // the backend's attention takes float32 operands only
		_, err = call(16)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: attention warm-up: %w", err)
	}
	ns := slices.Clone(ctxs)
	slices.Sort(ns)
	var rows []AttentionRow
	for _, n := range slices.Compact(ns) {
		if n <= 0 {
			return nil, fmt.Errorf("bench: attention: context %d", n)
		}
		s, err := call(n)
		if err != nil {
			return nil, fmt.Errorf("bench: attention over %d tokens: %w", n, err)
		}
		rows = append(rows, AttentionRow{Context: n, Seconds: s, Layers: layers})
	}
	return rows, nil
}
