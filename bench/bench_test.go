package bench

import (
	"testing"

	"github.com/matsurgery/matsurgery/kernels/cpu"
	"github.com/matsurgery/matsurgery/model"
)

func TestRunReportsEveryContext(t *testing.T) {
	be := cpu.New(0)
	defer be.Close()
	m, err := model.Load("../testdata/fixtures/qwen2-tiny-h25", be, model.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rows, err := Run(m, Options{Contexts: []int{16, 40}, DecodeTokens: 5, Vocab: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Context != 16 || rows[1].Context != 40 {
		t.Fatalf("rows %+v", rows)
	}
	for _, r := range rows {
		if !(r.PrefillTokPerS > 0) || !(r.DecodeTokPerS > 0) || r.DecodeTokens != 5 || r.PeakHostBytes <= 0 {
			t.Errorf("row %+v", r)
		}
	}
	if _, err := Run(m, Options{Contexts: []int{0}, Vocab: 1024}); err == nil {
		t.Error("context 0 accepted")
	}
}
