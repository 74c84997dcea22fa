// Package dataset reads LLaVA-format training data for the distillation trainer and writes a small
// synthetic task (coloured shapes) whose answers can be scored by exact match.
//
// A LLaVA data file is a JSON array of records (a JSON Lines file of records is read too):
//
//	[{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
//	  "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
//	                    {"from": "gpt", "value": "White and red."}, …]},
//	 {"id": "i6IyJda_0", "conversations": […]}]   ← no "image": a text-only record
//
// Open reads the file once as a stream, checks each record's shape (conversations that pair into
// questions and answers, string fields, optionally that the image file exists) and keeps only where
// each record lies in the file (16 bytes a record: 10 MB for LLaVA-1.5's 665K records). Sample
// reads one record again, tokenizes it with TinyLLaVA's template (package prompt), and decodes and
// preprocesses its picture (package images) only then.
//
// Samples are what TinyLLaVA's LazySupervisedDataset and collator hand the model: the prompt's ids with
// the −200 image placeholder, labels with −100 on everything but the answers, both cut to
// tokenizer_model_max_length, and the picture as a [3, size, size] tensor. Bad records are either
// skipped and counted by reason (Skip) or stop the run with an error naming the record (Stop).
//
// Order and Batcher decide which samples go into which step, as pure functions of a seed, the step
// and the dataset's length, so a run resumed at step k sees exactly what an uninterrupted run saw.
package dataset

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/matsurgery/matsurgery/formats"
	"github.com/matsurgery/matsurgery/images"
	"github.com/matsurgery/matsurgery/prompt"
	"github.com/matsurgery/matsurgery/tokenizer"
)

// Policy says what happens to a bad record.
type Policy int

const (
	// Stop makes a bad record an error: Open fails on a record of the wrong shape, Sample on a record
	// whose picture or tokens cannot be made. The error names the record.
	Stop Policy = iota
	// Skip leaves bad records out and counts them by reason (Dataset.Skipped). Open drops records of
	// the wrong shape (Len does not count them); Sample returns an error wrapping ErrSkipped for the
	// others, which the trainer leaves out of its batch.
	Skip
)

// String returns the policy's flag spelling.
func (p Policy) String() string {
	switch p {
	case Stop:
		return "stop"
	case Skip:
		return "skip"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// ParsePolicy reads "stop" or "skip".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "stop":
		return Stop, nil
	case "skip":
		return Skip, nil
	}
	return 0, fmt.Errorf("bad-record policy %q: want stop or skip", s)
}

// Reason is why a record is bad.
type Reason string

const (
	// ReasonMalformed: not a JSON object, or a field of the wrong type ("image" a list, a turn
	// without a string "value", …).
	ReasonMalformed Reason = "malformed record"
	// ReasonNoConversation: "conversations" absent, null or empty, or without any question and answer.
	ReasonNoConversation Reason = "no conversation"
	// ReasonUnpairedTurns: the turns do not pair into questions and answers (TinyLLaVA drops a first
	// turn that is not from "human", then takes turns two by two).
	ReasonUnpairedTurns Reason = "unpaired turns"
	// ReasonMissingImage: the record's image file does not exist or cannot be read.
	ReasonMissingImage Reason = "missing image"
	// ReasonBadImage: the image file is not a picture images.Load decodes.
	ReasonBadImage Reason = "undecodable image"
	// ReasonPlaceholder: the record's "<image>" placeholders do not match its picture: an image but no
	// "<image>" in any question, "<image>" but no image, or "<image>" in several questions.
	ReasonPlaceholder Reason = "image placeholder"
	// ReasonLabelMismatch: TinyLLaVA's label recount disagrees with the tokenized prompt, so it would
	// mask every label (see prompt.ErrLabelMismatch and Options.KeepLabelMismatch).
	ReasonLabelMismatch Reason = "label mismatch"
)

// ErrSkipped is wrapped by the error Sample returns, under Skip, for a record left out.
var ErrSkipped = errors.New("record skipped")

// RecordError is a bad record: which one, where, and why.
type RecordError struct {
	Record int    // position of the record in the file, from 0
	ID     string // the record's "id" ("" when it has none)
	Line   int    // line of the file where the record starts; 0 when not known
	Reason Reason
	Err    error // the details
}

func (e *RecordError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "record %d", e.Record)
	if e.ID != "" {
		fmt.Fprintf(&b, " (id %q)", e.ID)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " at line %d", e.Line)
	}
	fmt.Fprintf(&b, ": %s", e.Reason)
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

func (e *RecordError) Unwrap() error { return e.Err }

// Options says how records become samples.
type Options struct {
	// Family picks TinyLLaVA's default conversation template for the family (prompt.For), unless
	// Template is set.
	Family formats.Family
	// Template, when set, is used instead of Family's default (e.g. after ApplyTokenizerConfig, which
	// TinyLlama needs for its "legacy": false), its ModelMaxLength as it is (OptionsFor sets it).
	Template *prompt.Template
	// Tokenizer encodes the prompts. Required.
	Tokenizer *tokenizer.Tokenizer
	// ImageSize is the vision tower's input side (vision_config.image_size). Required.
	ImageSize int
	// ImageMode is config.json's image_aspect_ratio (images.ParseMode).
	ImageMode images.Mode
	// ImageLoad is passed to images.LoadWithOptions. TinyLLaVA's loader sets Pillow's
	// LOAD_TRUNCATED_IMAGES, which is AllowTruncated (OptionsFor sets it).
	ImageLoad images.LoadOptions
	// MaxLength cuts ids and labels to this many tokens, as TinyLLaVA's collator cuts them to
	// tokenizer_model_max_length (the −200 placeholder counts as one token). 0: no cut. Without a
	// Template it is also the template's ModelMaxLength (TinyLLaVA skips its label recount for
	// prompts that reach it). TinyLLaVA's model cuts once more after putting the picture's rows in
	// place of the placeholder (to tokenizer_model_max_length embeddings): that cut is the model's.
	MaxLength int
	// OnBadRecord is Stop (the zero value) or Skip.
	OnBadRecord Policy
	// CheckImages makes Open look up every record's image file (one stat each), so that records
	// whose picture is missing are found before training rather than when their turn comes.
	CheckImages bool
	// KeepLabelMismatch keeps the samples whose labels TinyLLaVA masks entirely after its label
	// recount disagrees with the prompt (their labels are then all −100, as in TinyLLaVA, which still
	// trains on them: the distillation's KL and layer terms see them). Without it they are bad records
	// (ReasonLabelMismatch). TinyLlama's non-legacy tokenizer makes every multi-round conversation
	// mismatch in TinyLLaVA, so keep them for that family to train on what TinyLLaVA trains on.
	KeepLabelMismatch bool
}

// OptionsFor fills Options from a TinyLLaVA checkpoint directory: the family, image size and aspect
// mode and tokenizer_model_max_length from config.json, the tokenizer from tokenizer.json, the
// family's template with tokenizer_config.json's facts (when the file is there) and model_max_length
// set to tokenizer_model_max_length as TinyLLaVA loads it, and AllowTruncated as TinyLLaVA's loader
// sets it. OnBadRecord, CheckImages and KeepLabelMismatch are left for the caller.
func OptionsFor(checkpointDir string) (Options, error) {
	cfg, err := formats.ReadModelConfig(checkpointDir)
	if err != nil {
		return Options{}, fmt.Errorf("dataset options: %w", err)
	}
	mode, err := images.ParseMode(cfg.ImageAspectRatio)
	if err != nil {
		return Options{}, fmt.Errorf("dataset options: %s: %w", cfg.Path, err)
	}
	tok, err := tokenizer.Load(filepath.Join(checkpointDir, "tokenizer.json"))
	if err != nil {
		return Options{}, fmt.Errorf("dataset options: %w", err)
	}
	tmpl, err := prompt.For(cfg.Family)
	if err != nil {
		return Options{}, fmt.Errorf("dataset options: %s: %w", cfg.Path, err)
	}
	tcPath := filepath.Join(checkpointDir, "tokenizer_config.json")
	if _, err := os.Stat(tcPath); err == nil {
		if err := tmpl.ApplyTokenizerConfig(tcPath); err != nil {
			return Options{}, fmt.Errorf("dataset options: %w", err)
		}
	}
	tmpl.ModelMaxLength = cfg.TokenizerMaxLength
	return Options{
		Family:    cfg.Family,
		Template:  tmpl,
		Tokenizer: tok,
		ImageSize: cfg.Vision.ImageSize,
		ImageMode: mode,
		ImageLoad: images.LoadOptions{AllowTruncated: true},
		MaxLength: cfg.TokenizerMaxLength,
	}, nil
}

// Sample is one training example.
type Sample struct {
	ID     string
	Record int // position of the record in the file
	// Pixels is the picture as the vision tower reads it, [3, size, size] CHW float32; nil for a
	// text-only record, and also when the MaxLength cut removed the image placeholder (TinyLLaVA then
	// passes the picture but its model uses none of it). Pixels != nil exactly when IDs holds one
	// prompt.ImagePlaceholder.
	Pixels []float32
	// IDs are the prompt's token ids, with prompt.ImagePlaceholder (−200) where the picture goes.
	IDs []int
	// Labels are IDs with prompt.IgnoreIndex (−100) on every position that carries no loss.
	Labels []int
}

// Record is a record as the file holds it.
type Record struct {
	Index         int    // position in the file
	ID            string // "" when the record has none
	Image         string // the picture's path (image directory joined), "" for a text-only record
	Conversations []prompt.Turn
}

// Question returns the first question with its "<image>" placeholders and surrounding space removed,
// and the first answer: what an evaluation asks and compares with.
func (r Record) Question() (question, answer string, err error) {
	first := 0
	if len(r.Conversations) > 0 && r.Conversations[0].From != "human" {
		first = 1
	}
	if len(r.Conversations) < first+2 {
		return "", "", fmt.Errorf("record %d: no question and answer", r.Index)
	}
	q := strings.TrimSpace(strings.ReplaceAll(r.Conversations[first].Value, prompt.ImageToken, ""))
	return q, r.Conversations[first+1].Value, nil
}

// location is where a kept record lies in the file: 16 bytes a record, 10 MB for LLaVA-1.5's 665K.
type location struct {
	start  int64  // [start, start+length) holds the record, possibly after a comma and white space
	length uint32 // bytes
	record int32  // position of the record in the file
}

// Dataset is an opened LLaVA data file. Its methods are safe for concurrent use.
type Dataset struct {
	path     string
	imageDir string
	file     *os.File
	opts     Options
	tmpl     *prompt.Template
	kept     []location
	total    int

	openCounts   map[Reason]int
	openExamples []RecordError

	mu             sync.Mutex
	failed         map[int]*RecordError // dataset index → why Sample left it out (Skip)
	sampleExamples []RecordError
}

// maxExamples bounds how many bad records Skipped describes one by one.
const maxExamples = 10

// Open reads the record list of a LLaVA-format JSON file (see the package documentation). Image
// paths are relative to imageDir; an empty imageDir means the JSON file's directory. The Dataset keeps
// the file open until Close.
func Open(jsonPath, imageDir string, opts Options) (*Dataset, error) {
	if opts.Tokenizer == nil {
		return nil, fmt.Errorf("dataset %s: no tokenizer", jsonPath)
	}
	if opts.ImageSize <= 0 {
		return nil, fmt.Errorf("dataset %s: image size %d must be positive", jsonPath, opts.ImageSize)
	}
	if opts.MaxLength < 0 {
		return nil, fmt.Errorf("dataset %s: max length %d is negative", jsonPath, opts.MaxLength)
	}
	if opts.OnBadRecord != Stop && opts.OnBadRecord != Skip {
		return nil, fmt.Errorf("dataset %s: unknown bad-record policy %v", jsonPath, opts.OnBadRecord)
	}
	tmpl := opts.Template
	if tmpl == nil {
		t, err := prompt.For(opts.Family)
		if err != nil {
			return nil, fmt.Errorf("dataset %s: %w", jsonPath, err)
		}
		t.ModelMaxLength = opts.MaxLength
		tmpl = t
	}
	// A template that does not fit the tokenizer (a special token it lacks) fails every record:
	// say so once, here.
	probe := []prompt.Turn{{From: "human", Value: "Hi"}, {From: "gpt", Value: "Hello"}}
	if _, _, err := tmpl.Encode(probe, opts.Tokenizer); err != nil && !errors.Is(err, prompt.ErrLabelMismatch) {
		return nil, fmt.Errorf("dataset %s: %w", jsonPath, err)
	}
	if imageDir == "" {
		imageDir = filepath.Dir(jsonPath)
	}
	f, err := os.Open(jsonPath)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	d := &Dataset{
		path:       jsonPath,
		imageDir:   imageDir,
		file:       f,
		opts:       opts,
		tmpl:       tmpl,
		openCounts: map[Reason]int{},
		failed:     map[int]*RecordError{},
	}
	if err := d.scan(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// Close closes the data file.
func (d *Dataset) Close() error { return d.file.Close() }

// Len is the number of samples: the file's records less those Open left out.
func (d *Dataset) Len() int { return len(d.kept) }

// Records is the number of records in the file.
func (d *Dataset) Records() int { return d.total }

// Path is the data file's path.
func (d *Dataset) Path() string { return d.path }

// SkipReport counts the records left out, by reason.
type SkipReport struct {
	Counts   map[Reason]int
	Examples []RecordError // the first few, in the order they were found
}

// Total is the number of records left out.
func (r SkipReport) Total() int {
	n := 0
	for _, c := range r.Counts {
		n += c
	}
	return n
}

// Skipped reports the records left out so far: by Open, and by Sample for the records asked for
// (each counted once however often it is asked for).
func (d *Dataset) Skipped() SkipReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := SkipReport{Counts: map[Reason]int{}}
	for k, v := range d.openCounts {
		r.Counts[k] += v
	}
	for _, e := range d.failed {
		r.Counts[e.Reason]++
	}
	r.Examples = append(r.Examples, d.openExamples...)
	for _, e := range d.sampleExamples {
		if len(r.Examples) == maxExamples {
			break
		}
		r.Examples = append(r.Examples, e)
	}
	return r
}

// fullRecord is a record as Sample reads it.
type fullRecord struct {
	ID            json.RawMessage `json:"id"`
	Image         json.RawMessage `json:"image"`
	Conversations []prompt.Turn   `json:"conversations"`
}

// readRecord reads and decodes the i-th kept record.
func (d *Dataset) readRecord(i int) (fullRecord, location, error) {
	var rec fullRecord
	if i < 0 || i >= len(d.kept) {
		return rec, location{}, fmt.Errorf("dataset %s: sample %d out of range [0, %d)", d.path, i, len(d.kept))
	}
	loc := d.kept[i]
	buf := make([]byte, loc.length)
	if _, err := d.file.ReadAt(buf, loc.start); err != nil {
		return rec, loc, fmt.Errorf("dataset %s: record %d: %w", d.path, loc.record, err)
	}
	buf = trimSeparator(buf)
	if err := json.Unmarshal(buf, &rec); err != nil {
		return rec, loc, fmt.Errorf("dataset %s: %w", d.path, &RecordError{Record: int(loc.record), Reason: ReasonMalformed,
			Err: fmt.Errorf("%w (did the file change after Open?)", err)})
	}
	return rec, loc, nil
}

// trimSeparator drops the comma and white space that may precede a record.
func trimSeparator(b []byte) []byte {
	for len(b) > 0 && (b[0] == ',' || isSpace(b[0])) {
		b = b[1:]
	}
	return b
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Record returns the i-th sample's record as the file holds it.
func (d *Dataset) Record(i int) (Record, error) {
	rec, loc, err := d.readRecord(i)
	if err != nil {
		return Record{}, err
	}
	id, _ := recordID(rec.ID)
	img, _, err := d.imagePath(rec.Image)
	if err != nil {
		return Record{}, fmt.Errorf("dataset %s: %w", d.path, &RecordError{Record: int(loc.record), ID: id, Reason: ReasonMalformed, Err: err})
	}
	return Record{Index: int(loc.record), ID: id, Image: img, Conversations: rec.Conversations}, nil
}

// recordID turns a JSON id (a string or a number) into text.
func recordID(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return s, nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return string(raw), nil
	}
	return "", fmt.Errorf("id is %s, want a string or a number", jsonKind(raw[0]))
}

// imagePath resolves a record's "image" field: absent or null is a text-only record (""), a string
// is a path relative to the image directory (an absolute one is kept, as Python's os.path.join does).
func (d *Dataset) imagePath(raw json.RawMessage) (path string, ok bool, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", false, nil
	}
	if raw[0] != '"' {
		return "", false, fmt.Errorf("image is %s, want a string (one picture per record)", jsonKind(raw[0]))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, fmt.Errorf("image: %w", err)
	}
	if s == "" {
		return "", false, errors.New("image is an empty string")
	}
	if filepath.IsAbs(s) {
		return s, true, nil
	}
	return filepath.Join(d.imageDir, s), true, nil
}

// jsonKind names the kind of JSON value that starts with c.
func jsonKind(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// Sample returns the i-th sample (0 ≤ i < Len). Under Skip, a bad record gives an error wrapping
// ErrSkipped and a *RecordError; under Stop, the *RecordError alone. Other errors (I/O) are returned
// as they are under both.
func (d *Dataset) Sample(i int) (Sample, error) {
	rec, loc, err := d.readRecord(i)
	if err != nil {
		var re *RecordError
		if errors.As(err, &re) {
			return Sample{}, d.bad(i, re)
		}
		return Sample{}, err
	}
	id, err := recordID(rec.ID)
	if err != nil {
		return Sample{}, d.bad(i, &RecordError{Record: int(loc.record), Reason: ReasonMalformed, Err: err})
	}
	fail := func(reason Reason, err error) (Sample, error) {
		return Sample{}, d.bad(i, &RecordError{Record: int(loc.record), ID: id, Reason: reason, Err: err})
	}
	imgPath, hasImage, err := d.imagePath(rec.Image)
	if err != nil {
		return fail(ReasonMalformed, err)
	}
	ids, labels, err := d.tmpl.Encode(rec.Conversations, d.opts.Tokenizer)
	switch {
	case errors.Is(err, prompt.ErrLabelMismatch) && d.opts.KeepLabelMismatch:
	case errors.Is(err, prompt.ErrLabelMismatch):
		return fail(ReasonLabelMismatch, err)
	case errors.Is(err, prompt.ErrImages):
		return fail(ReasonPlaceholder, err)
	case err != nil:
		return fail(ReasonUnpairedTurns, err)
	}
	placeholders := countPlaceholders(ids)
	switch {
	case hasImage && placeholders == 0:
		return fail(ReasonPlaceholder, fmt.Errorf("the record has an image but no %q in its questions", prompt.ImageToken))
	case !hasImage && placeholders > 0:
		return fail(ReasonPlaceholder, fmt.Errorf("a question holds %q but the record has no image", prompt.ImageToken))
	}
	if n := d.opts.MaxLength; n > 0 && len(ids) > n {
		ids, labels = ids[:n:n], labels[:n:n]
		if hasImage && countPlaceholders(ids) == 0 {
			hasImage = false // the cut removed the placeholder: the picture would not be used
		}
	}
	s := Sample{ID: id, Record: int(loc.record), IDs: ids, Labels: labels}
	if hasImage {
		img, err := images.LoadWithOptions(imgPath, d.opts.ImageLoad)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return fail(ReasonMissingImage, err)
		}
		if err != nil {
			return fail(ReasonBadImage, err)
		}
		if s.Pixels, err = images.Preprocess(img, d.opts.ImageSize, d.opts.ImageMode); err != nil {
			return fail(ReasonBadImage, fmt.Errorf("%s: %w", imgPath, err))
		}
	}
	return s, nil
}

func countPlaceholders(ids []int) int {
	n := 0
	for _, id := range ids {
		if id == prompt.ImagePlaceholder {
			n++
		}
	}
	return n
}

// bad records a record Sample cannot make and returns the error to hand back.
func (d *Dataset) bad(i int, e *RecordError) error {
	if d.opts.OnBadRecord == Stop {
		return fmt.Errorf("dataset %s: %w", d.path, e)
	}
	d.mu.Lock()
	if _, seen := d.failed[i]; !seen {
		d.failed[i] = e
		if len(d.sampleExamples) < maxExamples {
			d.sampleExamples = append(d.sampleExamples, *e)
		}
	}
	d.mu.Unlock()
	return fmt.Errorf("dataset %s: %w: %w", d.path, ErrSkipped, e)
}
