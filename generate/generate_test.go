package generate

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
	"github.com/matsurgery/matsurgery/tokenizer"
)

func TestSampleGreedy(t *testing.T) {
	if got := Sample([]float32{0.1, 3, 3, -1}, 0, 0, nil); got != 1 {
		t.Errorf("argmax = %d, want 1 (lowest of the ties)", got)
	}
}

func TestSampleMatchesSoftmaxAndTopP(t *testing.T) {
	logits := []float32{2, 1, 0, -1, 0.5}
	r := rand.New(rand.NewPCG(1, 2))
	const n = 200000
	for _, tc := range []struct {
		temp, topP float64
	}{{1, 1}, {0.5, 1}, {1, 0.7}} {
		counts := make([]float64, len(logits))
		for i := 0; i < n; i++ {
			counts[Sample(logits, tc.temp, tc.topP, r)]++
		}
		// Expected: softmax(logits/T), truncated to the top-p nucleus.
		p := make([]float64, len(logits))
		var z float64
		for i, v := range logits {
			p[i] = math.Exp(float64(v) / tc.temp)
			z += p[i]
		}
		order := []int{0, 1, 4, 2, 3}
		keep := map[int]bool{}
		var acc float64
		for _, i := range order {
			keep[i] = true
			acc += p[i] / z
			if tc.topP < 1 && acc >= tc.topP {
				break
			}
		}
		var zk float64
		for i := range p {
			if keep[i] {
				zk += p[i]
			}
		}
		for i := range p {
			want := 0.0
			if keep[i] {
				want = p[i] / zk
			}
			got := counts[i] / n
			if math.Abs(got-want) > 4*math.Sqrt(want*(1-want)/n)+1e-9 {
				t.Errorf("T=%v top-p=%v: token %d frequency %.4f, want %.4f", tc.temp, tc.topP, i, got, want)
			}
		}
	}
}

// Greedy incremental generation must pick, at every step, the argmax of the
// full-sequence forward over the prompt plus what it generated so far.
func TestGreedyGenerationAgreesWithFullForward(t *testing.T) {
	for _, dir := range []string{"../testdata/fixtures/phi-tiny", "../testdata/fixtures/phi-tiny-h25"} {
		be := cpu.New(0)
		m, err := model.Load(dir, be, model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := tokenizer.Load("../testdata/fixtures/phi-tiny/tokenizer.json")
		if err != nil {
			t.Fatal(err)
		}
		ids := tok.Encode("A chat between a curious user and an artificial intelligence assistant. USER: hello ASSISTANT:", false)
		var pieces []string
		res, err := Run(m, tok, nil, ids, Options{MaxNewTokens: 12}, func(s string) error { pieces = append(pieces, s); return nil })
		if err != nil {
			t.Fatal(err)
		}
		if len(res.NewTokens) == 0 {
			t.Fatal("nothing generated")
		}
		all := append(append([]int(nil), ids...), res.NewTokens...)
		logits, err := m.Forward(nil, all)
		if err != nil {
			t.Fatal(err)
		}
		lv, err := be.Download(logits)
		if err != nil {
			t.Fatal(err)
		}
		vocab := len(lv) / len(all)
		for i, id := range res.NewTokens {
			row := lv[(len(ids)-1+i)*vocab : (len(ids)+i)*vocab]
			if want := Sample(row, 0, 0, nil); want != id {
				t.Errorf("%s: token %d is %d, full forward's argmax %d", dir, i, id, want)
			}
		}
		if strings.Join(pieces, "") != res.Text {
			t.Errorf("streamed %q, result text %q", strings.Join(pieces, ""), res.Text)
		}
		m.Close()
		be.Close()
	}
}
