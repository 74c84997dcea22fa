package dataset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/images"
	"github.com/matsurgery/matsurgery/prompt"
	"github.com/matsurgery/matsurgery/tokenizer"
)

func fixtureDir(family formats.Family) string {
	return filepath.Join("..", "testdata", "fixtures", string(family)+"-tiny")
}

func loadTok(t testing.TB, family formats.Family) *tokenizer.Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(filepath.Join(fixtureDir(family), "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func phiOptions(t testing.TB, policy Policy) Options {
	return Options{Family: formats.Phi, Tokenizer: loadTok(t, formats.Phi), ImageSize: 28, OnBadRecord: policy}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writePicture writes a small PNG scene (seeded) to path.
func writePicture(t testing.TB, path string, seed uint64) {
	t.Helper()
	dir := t.TempDir()
	if err := WriteShapes(dir, 1, seed, 40); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "images", "000000.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// labelledText decodes the runs of labelled positions, joined by "|".
func labelledText(tok *tokenizer.Tokenizer, labels []int) string {
	var runs []string
	var cur []int
	for _, l := range append(slices.Clone(labels), prompt.IgnoreIndex) {
		if l != prompt.IgnoreIndex {
			cur = append(cur, l)
			continue
		}
		if len(cur) > 0 {
			runs = append(runs, tok.Decode(cur, false))
			cur = nil
		}
	}
	return strings.Join(runs, "|")
}

func count(ids []int, v int) int {
	n := 0
	for _, x := range ids {
		if x == v {
			n++
		}
	}
	return n
}

const goodRecords = `[
  {"id": "img-1", "image": "pics/a.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A shape."}]},
  {"id": 7, "conversations": [
    {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]},
  {"id": "multi", "image": "pics/b.png", "model": "extra fields are ignored", "conversations": [
    {"from": "system", "value": "dropped, as TinyLLaVA drops a first turn not from human"},
    {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A picture."},
    {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Green."}]},
  {"conversations": [{"from": "human", "value": "No id, \"escaped\" \u0041."}, {"from": "gpt", "value": "Fine."}], "image": null}
]`

func TestOpenAndSample(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "data.json"), goodRecords)
	writePicture(t, filepath.Join(dir, "pics", "a.png"), 1)
	writePicture(t, filepath.Join(dir, "pics", "b.png"), 2)
	opts := phiOptions(t, Stop)
	d, err := Open(filepath.Join(dir, "data.json"), "", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Len() != 4 || d.Records() != 4 {
		t.Fatalf("Len %d, Records %d, want 4 and 4", d.Len(), d.Records())
	}
	want := []struct {
		id        string
		image     string
		labelled  string
		questions int
	}{
		{"img-1", "pics/a.png", " A shape.<|endoftext|>", 1},
		{"7", "", " Hello.<|endoftext|>", 1},
		{"multi", "pics/b.png", " A picture.<|endoftext|>| Green.<|endoftext|>", 2},
		{"", "", " Fine.<|endoftext|>", 1},
	}
	for i, w := range want {
		s, err := d.Sample(i)
		if err != nil {
			t.Fatalf("sample %d: %v", i, err)
		}
		if s.ID != w.id || s.Record != i {
			t.Errorf("sample %d: id %q record %d, want %q %d", i, s.ID, s.Record, w.id, i)
		}
		if len(s.IDs) != len(s.Labels) {
			t.Fatalf("sample %d: %d ids, %d labels", i, len(s.IDs), len(s.Labels))
		}
		if got := labelledText(opts.Tokenizer, s.Labels); got != w.labelled {
			t.Errorf("sample %d: labelled text %q, want %q", i, got, w.labelled)
		}
		// Labels are the ids wherever they are not masked.
		for j, l := range s.Labels {
			if l != prompt.IgnoreIndex && l != s.IDs[j] {
				t.Fatalf("sample %d: label %d at %d, id %d", i, l, j, s.IDs[j])
			}
		}
		rec, err := d.Record(i)
		if err != nil {
			t.Fatal(err)
		}
		wantIDs, wantLabels, err := prompt.Build(formats.Phi, rec.Conversations, opts.Tokenizer)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.IDs, wantIDs) || !slices.Equal(s.Labels, wantLabels) {
			t.Errorf("sample %d: ids/labels differ from prompt.Build of the record", i)
		}
		if got := count(s.IDs, prompt.ImagePlaceholder); (w.image != "") != (got == 1) || got > 1 {
			t.Errorf("sample %d: %d image placeholders (image %q)", i, got, w.image)
		}
		if w.image == "" {
			if s.Pixels != nil || rec.Image != "" {
				t.Errorf("sample %d: text-only record has pixels (%d) or image %q", i, len(s.Pixels), rec.Image)
			}
			continue
		}
		if rec.Image != filepath.Join(dir, w.image) {
			t.Errorf("sample %d: image path %q, want %q", i, rec.Image, filepath.Join(dir, w.image))
		}
		img, err := images.Load(filepath.Join(dir, w.image))
		if err != nil {
			t.Fatal(err)
		}
		px, err := images.Preprocess(img, 28, images.Square)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.Pixels, px) {
			t.Errorf("sample %d: pixels differ from images.Preprocess of the file", i)
		}
	}
	if r := d.Skipped(); r.Total() != 0 {
		t.Errorf("skipped %v", r.Counts)
	}
	if got := d.Order(3, 1); !slices.Equal(got, Permutation(4, 3, 1)) {
		t.Errorf("Order(3, 1) = %v, want Permutation(4, 3, 1)", got)
	}
	if _, err := d.Sample(4); err == nil || errors.Is(err, ErrSkipped) {
		t.Errorf("sample out of range: %v", err)
	}
	if _, err := d.Sample(-1); err == nil {
		t.Error("sample -1: no error")
	}
	q, a, err := mustRecord(t, d, 2).Question()
	if err != nil || q != "What is this?" || a != "A picture." {
		t.Errorf("Question() = %q, %q, %v", q, a, err)
	}
}

func mustRecord(t *testing.T, d *Dataset, i int) Record {
	t.Helper()
	r, err := d.Record(i)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// badRecords holds one record of each kind Open finds bad, and good ones between them.
const badRecords = `[
{"id": "ok-0", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]},
42,
{"id": "no-conv"},
{"id": "empty-conv", "conversations": []},
{"id": "odd", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "And?"}]},
{"id": "lonely", "conversations": [{"from": "gpt", "value": "Hello."}]},
{"id": "value-type", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "Hello."}]},
{"id": "no-from", "conversations": [{"value": "Hi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "conv-string", "conversations": "Hi."},
{"id": "turn-string", "conversations": ["Hi.", "Hello."]},
{"id": "image-list", "image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]},
{"id": {"bad": 1}, "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "missing-image", "image": "nowhere.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "ok-13", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]}
]`

// sampleBadRecords holds records whose fault only Sample finds.
const sampleBadRecords = `[
{"id": "ok-0", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "missing-image", "image": "nowhere.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "garbage-image", "image": "garbage.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "mismatch", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}, {"from": "human", "value": "Say it."}, {"from": "gpt", "value": "USER: hi ASSISTANT: hello"}]},
{"id": "two-images", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nAgain."}, {"from": "gpt", "value": "Hello."}]},
{"id": "image-no-token", "image": "pic.png", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "token-no-image", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]},
{"id": "ok-7", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]}
]`

func TestOpenSkipsBadRecords(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "data.json"), badRecords)
	writePicture(t, filepath.Join(dir, "pic.png"), 3)
	for _, check := range []bool{false, true} {
		opts := phiOptions(t, Skip)
		opts.CheckImages = check
		d, err := Open(filepath.Join(dir, "data.json"), dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := map[Reason]int{ReasonMalformed: 7, ReasonNoConversation: 3, ReasonUnpairedTurns: 1}
		wantLen := 3
		if check {
			want[ReasonMissingImage] = 1
			wantLen = 2
		}
		r := d.Skipped()
		if fmt.Sprint(r.Counts) != fmt.Sprint(want) || d.Len() != wantLen || d.Records() != 14 {
			t.Errorf("CheckImages %v: skipped %v, Len %d, Records %d; want %v, %d, 14", check, r.Counts, d.Len(), d.Records(), want, wantLen)
		}
		if len(r.Examples) != min(r.Total(), maxExamples) {
			t.Errorf("%d examples for %d skipped", len(r.Examples), r.Total())
		}
		// The examples name the records and their lines (record k is on line k+2).
		for _, e := range r.Examples {
			if e.Line != e.Record+2 {
				t.Errorf("example %v: line %d, want %d", e.Error(), e.Line, e.Record+2)
			}
		}
		var ids []string
		for i := 0; i < d.Len(); i++ {
			s, err := d.Sample(i)
			if errors.Is(err, ErrSkipped) {
				ids = append(ids, "skipped:"+s.ID)
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, s.ID)
		}
		wantIDs := "[ok-0 ok-13]"
		if !check {
			wantIDs = "[ok-0 skipped: ok-13]"
		}
		if fmt.Sprint(ids) != wantIDs {
			t.Errorf("CheckImages %v: samples %v, want %v", check, ids, wantIDs)
		}
		d.Close()
	}
}

func TestSampleSkipsBadRecords(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "data.json"), sampleBadRecords)
	writePicture(t, filepath.Join(dir, "pic.png"), 4)
	writeFile(t, filepath.Join(dir, "garbage.png"), "\x89PNG\r\n\x1a\nthis is not a picture")
	d, err := Open(filepath.Join(dir, "data.json"), "", phiOptions(t, Skip))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Len() != 8 {
		t.Fatalf("Len %d, want 8 (Open finds none of these)", d.Len())
	}
	wantReasons := []Reason{"", ReasonMissingImage, ReasonBadImage, ReasonLabelMismatch, ReasonPlaceholder, ReasonPlaceholder, ReasonPlaceholder, ""}
	for pass := 0; pass < 2; pass++ { // asking twice counts each record once
		for i, reason := range wantReasons {
			s, err := d.Sample(i)
			var re *RecordError
			switch {
			case reason == "" && err != nil:
				t.Errorf("sample %d: %v", i, err)
			case reason == "":
				if s.ID != fmt.Sprintf("ok-%d", i) {
					t.Errorf("sample %d: id %q", i, s.ID)
				}
			case !errors.Is(err, ErrSkipped) || !errors.As(err, &re):
				t.Errorf("sample %d: %v, want a skipped *RecordError", i, err)
			case re.Reason != reason || re.Record != i:
				t.Errorf("sample %d: %v, want reason %q", i, err, reason)
			}
		}
	}
	r := d.Skipped()
	want := map[Reason]int{ReasonMissingImage: 1, ReasonBadImage: 1, ReasonLabelMismatch: 1, ReasonPlaceholder: 3}
	if fmt.Sprint(r.Counts) != fmt.Sprint(want) || len(r.Examples) != 6 {
		t.Errorf("skipped %v with %d examples, want %v and 6", r.Counts, len(r.Examples), want)
	}

	// KeepLabelMismatch keeps the record, every label masked as TinyLLaVA masks it.
	opts := phiOptions(t, Stop)
	opts.KeepLabelMismatch = true
	d2, err := Open(filepath.Join(dir, "data.json"), "", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	s, err := d2.Sample(3)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pixels == nil || count(s.Labels, prompt.IgnoreIndex) != len(s.Labels) || len(s.IDs) == 0 {
		t.Errorf("kept mismatch: %d pixels, %d of %d labels masked", len(s.Pixels), count(s.Labels, prompt.IgnoreIndex), len(s.Labels))
	}
}

func TestStop(t *testing.T) {
	dir := t.TempDir()
	writePicture(t, filepath.Join(dir, "pic.png"), 5)
	writeFile(t, filepath.Join(dir, "garbage.png"), "GIF89a not supported")
	good := `{"id": "ok", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}`
	for _, c := range []struct {
		name, record string
		check        bool
		open         string // regexp of Open's error; "" when Open succeeds
		sample       string // regexp of Sample(1)'s error
	}{
		{"not-object", `"text"`, false, `\.json: record 1 at line 3: malformed record: the record is a string, want an object`, ""},
		{"no-conversations", `{"id": "x"}`, false, `record 1 \(id "x"\) at line 3: no conversation: "conversations" is absent or null`, ""},
		{"odd", `{"id": "x", "conversations": [{"from": "human", "value": "a"}]}`, false, `record 1 \(id "x"\) at line 3: unpaired turns: 1 turns do not pair`, ""},
		{"null-value", `{"id": "x", "conversations": [{"from": "human", "value": null}, {"from": "gpt", "value": "b"}]}`, false, `record 1 \(id "x"\) at line 3: malformed record: turn 0: "value" is null, want a string`, ""},
		{"image-object", `{"id": "x", "image": {}, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}`, false, `record 1 \(id "x"\) at line 3: malformed record: image is an object, want a string`, ""},
		{"missing-checked", `{"id": "x", "image": "gone.png", "conversations": [{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}]}`, true, `record 1 \(id "x"\) at line 3: missing image: .*gone\.png: no such file`, ""},
		{"missing-unchecked", `{"id": "x", "image": "gone.png", "conversations": [{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}]}`, false, "", `record 1 \(id "x"\): missing image: .*gone\.png: no such file`},
		{"unsupported", `{"id": "x", "image": "garbage.png", "conversations": [{"from": "human", "value": "<image>a"}, {"from": "gpt", "value": "b"}]}`, false, "", `record 1 \(id "x"\): undecodable image: .*garbage\.png: unsupported image format: GIF`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".json")
			writeFile(t, path, "[\n"+good+",\n"+c.record+",\n"+good+"\n]\n")
			opts := phiOptions(t, Stop)
			opts.CheckImages = c.check
			d, err := Open(path, dir, opts)
			if c.open != "" {
				if err == nil || !regexp.MustCompile(c.open).MatchString(err.Error()) {
					t.Fatalf("Open: %v, want %s", err, c.open)
				}
				var re *RecordError
				if !errors.As(err, &re) || re.Record != 1 {
					t.Errorf("Open: %v is no *RecordError of record 1", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if _, err := d.Sample(0); err != nil {
				t.Fatal(err)
			}
			_, err = d.Sample(1)
			if err == nil || errors.Is(err, ErrSkipped) || !regexp.MustCompile(c.sample).MatchString(err.Error()) {
				t.Fatalf("Sample: %v, want %s (not skipped)", err, c.sample)
			}
			if r := d.Skipped(); r.Total() != 0 {
				t.Errorf("Stop counted skips: %v", r.Counts)
			}
		})
	}
}

func TestMalformedJSON(t *testing.T) {
	rec := `{"id": "a", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}`
	for _, c := range []struct {
		name, content, want string
	}{
		{"empty", "  \n ", `the file is empty`},
		{"top-level string", "\n  \"records\"", `line 2, column 3: the file starts with '"', want a JSON array`},
		{"bad character", "[\n" + rec + ",\n" + `{"id": "b", "conversations": [{"from": "human" "value": "x"}]}` + "\n]",
			`line 3, column 48: invalid character '"' after object key:value pair \(record 1\)`},
		{"missing comma", "[\n" + rec + "\n" + rec + "\n]", `line 3, column 1: found '{' where a , or ] should follow record 0`},
		{"trailing comma", "[\n" + rec + ",\n]", `line 3, column 1: invalid character '\]' looking for beginning of value \(record 1\)`},
		{"cut inside a record", "[\n" + rec + ",\n" + rec[:40], `line 3, column 41: unexpected end of file inside record 1, which starts at line 3`},
		{"not closed", "[\n" + rec + "\n", `line 3, column 1: the file ends before the array of records is closed with \] \(after record 0\)`},
		{"extra data", "[\n" + rec + "\n]\n]", `line 4, column 1: data after the closing \]`},
		{"bad literal", "[\n" + rec + ",\n  {\"id\": tru}]", `line 3, column 13: invalid character '}' in literal true \(expecting 'e'\) \(record 1\)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "data.json")
			writeFile(t, path, c.content)
			for _, policy := range []Policy{Stop, Skip} {
				_, err := Open(path, "", phiOptions(t, policy))
				if err == nil || !regexp.MustCompile(c.want).MatchString(err.Error()) {
					t.Errorf("%v: %v, want %s", policy, err, c.want)
				}
			}
		})
	}
}

func TestJSONLines(t *testing.T) {
	dir := t.TempDir()
	writePicture(t, filepath.Join(dir, "pic.png"), 6)
	lines := `{"id": "a", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nHi."}, {"from": "gpt", "value": "Hello."}]}
[1, 2]
{"id": "c", "conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Bye."}]}
`
	writeFile(t, filepath.Join(dir, "data.jsonl"), lines)
	d, err := Open(filepath.Join(dir, "data.jsonl"), "", phiOptions(t, Skip))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Len() != 2 || d.Records() != 3 || d.Skipped().Counts[ReasonMalformed] != 1 {
		t.Fatalf("Len %d, Records %d, skipped %v", d.Len(), d.Records(), d.Skipped().Counts)
	}
	if e := d.Skipped().Examples[0]; e.Line != 2 || e.Record != 1 {
		t.Errorf("example %v: want record 1 on line 2", e.Error())
	}
	for i, want := range []string{"a", "c"} {
		s, err := d.Sample(i)
		if err != nil || s.ID != want {
			t.Errorf("sample %d: %q, %v", i, s.ID, err)
		}
	}
	writeFile(t, filepath.Join(dir, "bad.jsonl"), lines+`{"id": "d", "conversations": [}`+"\n")
	_, err = Open(filepath.Join(dir, "bad.jsonl"), "", phiOptions(t, Skip))
	if err == nil || !strings.Contains(err.Error(), "line 4, column 31: invalid character '}' looking for beginning of value (record 3)") {
		t.Errorf("bad JSON Lines: %v", err)
	}
}

func TestTruncation(t *testing.T) {
	dir := t.TempDir()
	writePicture(t, filepath.Join(dir, "pic.png"), 7)
	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20)
	writeFile(t, filepath.Join(dir, "data.json"), `[
{"id": "front", "image": "pic.png", "conversations": [{"from": "human", "value": "<image>\nTell me."}, {"from": "gpt", "value": "`+long+`"}]},
{"id": "back", "image": "pic.png", "conversations": [{"from": "human", "value": "`+long+`"}, {"from": "gpt", "value": "Yes."}, {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "No."}]}
]`)
	full, err := Open(filepath.Join(dir, "data.json"), "", phiOptions(t, Stop))
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	for _, maxLen := range []int{1, 17, 40} {
		opts := phiOptions(t, Stop)
		opts.MaxLength = maxLen
		cut, err := Open(filepath.Join(dir, "data.json"), "", opts)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			f, err := full.Sample(i)
			if err != nil {
				t.Fatal(err)
			}
			c, err := cut.Sample(i)
			if err != nil {
				t.Fatal(err)
			}
			if len(f.IDs) <= 40 {
				t.Fatalf("sample %d has %d tokens: too short for the test", i, len(f.IDs))
			}
			if !slices.Equal(c.IDs, f.IDs[:maxLen]) || !slices.Equal(c.Labels, f.Labels[:maxLen]) {
				t.Errorf("max %d, sample %d: cut ids/labels are not the first %d of the full ones", maxLen, i, maxLen)
			}
			hasPlaceholder := count(c.IDs, prompt.ImagePlaceholder) == 1
			if hasPlaceholder != (c.Pixels != nil) {
				t.Errorf("max %d, sample %d: placeholder %v, pixels %d", maxLen, i, hasPlaceholder, len(c.Pixels))
			}
			if i == 1 && hasPlaceholder {
				t.Errorf("max %d: the placeholder after %d tokens survived", maxLen, maxLen)
			}
		}
		cut.Close()
	}
}

func TestOptionsFor(t *testing.T) {
	for _, c := range []struct {
		family   formats.Family
		template string
		maxLen   int
		legacy   bool
	}{
		{formats.Phi, "phi", 3072, true},
		{formats.Qwen2, "qwen2_base", 2048, true},
		{formats.Llama, "llama", 2048, true},
	} {
		opts, err := OptionsFor(fixtureDir(c.family))
		if err != nil {
			t.Fatal(err)
		}
		if opts.Family != c.family || opts.Template.Name != c.template || opts.ImageSize != 56 || opts.ImageMode != images.Square ||
			opts.MaxLength != opts.Template.ModelMaxLength || opts.Tokenizer == nil || !opts.ImageLoad.AllowTruncated || opts.Template.Legacy != c.legacy {
			t.Errorf("%s: %+v (template %+v)", c.family, opts, *opts.Template)
		}
		cfg, err := formats.ReadModelConfig(fixtureDir(c.family))
		if err != nil {
			t.Fatal(err)
		}
		if opts.MaxLength != cfg.TokenizerMaxLength || opts.MaxLength <= 0 {
			t.Errorf("%s: MaxLength %d, config says %d", c.family, opts.MaxLength, cfg.TokenizerMaxLength)
		}
	}
	if _, err := OptionsFor(t.TempDir()); err == nil {
		t.Error("OptionsFor of an empty directory: no error")
	}
}

func TestOpenOptionErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.json")
	writeFile(t, path, "[]")
	tok := loadTok(t, formats.Phi)
	llamaTok := loadTok(t, formats.Llama)
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{Family: formats.Phi, ImageSize: 28}, "no tokenizer"},
		{Options{Family: formats.Phi, Tokenizer: tok}, "image size 0"},
		{Options{Family: formats.Phi, Tokenizer: tok, ImageSize: 28, MaxLength: -1}, "max length -1"},
		{Options{Family: "gpt9", Tokenizer: tok, ImageSize: 28}, `model family "gpt9"`},
		{Options{Family: formats.Phi, Tokenizer: tok, ImageSize: 28, OnBadRecord: 7}, "unknown bad-record policy"},
		{Options{Family: formats.Phi, Tokenizer: llamaTok, ImageSize: 28}, `the tokenizer has no BOS token "<|endoftext|>"`},
	} {
		if _, err := Open(path, "", c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.opts, err, c.want)
		}
	}
	if _, err := Open(filepath.Join(t.TempDir(), "none.json"), "", phiOptions(t, Stop)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	d, err := Open(path, "", phiOptions(t, Stop))
	if err != nil || d.Len() != 0 {
		t.Fatalf("empty array: %v", err)
	}
	d.Close()
	for _, s := range []string{"stop", "skip"} {
		if p, err := ParsePolicy(s); err != nil || p.String() != s {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParsePolicy("ignore"); err == nil {
		t.Error("ParsePolicy(ignore): no error")
	}
}

func TestAbsoluteImagePath(t *testing.T) {
	dir := t.TempDir()
	pic := filepath.Join(dir, "elsewhere", "pic.png")
	writePicture(t, pic, 8)
	writeFile(t, filepath.Join(dir, "data.json"), `[{"id": "a", "image": "`+pic+`", "conversations": [{"from": "human", "value": "<image>Hi."}, {"from": "gpt", "value": "Hello."}]}]`)
	opts := phiOptions(t, Stop)
	opts.CheckImages = true
	d, err := Open(filepath.Join(dir, "data.json"), filepath.Join(dir, "images"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if s, err := d.Sample(0); err != nil || s.Pixels == nil {
		t.Fatalf("%v", err)
	}
}

// TestConcurrentSamples: samples made from several goroutines equal those made one by one.
func TestConcurrentSamples(t *testing.T) {
	dir := t.TempDir()
	if err := WriteShapes(dir, 24, 9, 32); err != nil {
		t.Fatal(err)
	}
	d, err := Open(filepath.Join(dir, "data.json"), "", phiOptions(t, Stop))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := make([]Sample, d.Len())
	for i := range want {
		if want[i], err = d.Sample(i); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]Sample, d.Len())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(got); i += 4 {
				s, err := d.Sample(i)
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = s
			}
		}()
	}
	wg.Wait()
	for i := range want {
		if got[i].ID != want[i].ID || !slices.Equal(got[i].IDs, want[i].IDs) || !slices.Equal(got[i].Pixels, want[i].Pixels) {
			t.Errorf("sample %d differs when made concurrently", i)
		}
	}
}
