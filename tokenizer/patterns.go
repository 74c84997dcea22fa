package tokenizer

// gpt2Pattern is the split pattern built into the ByteLevel pre-tokenizer (GPT-2, Phi-2).
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// qwen2Pattern is the Split pattern of Qwen2's tokenizer.json.
const qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

var (
	gpt2Splitter  spanFinder = mustCompileSplitRegex(gpt2Pattern)
	qwen2Splitter spanFinder = mustCompileSplitRegex(qwen2Pattern)
)

func mustCompileSplitRegex(pattern string) *splitRegex {
	re, err := compileSplitRegex(pattern)
	if err != nil {
		panic(err) // a constant pattern: only a programming error gets here
	}
	return re
}
