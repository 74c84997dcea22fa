// Package progress is the small interface long work reports through: the
// CLI draws a bar on a terminal, tests and pipelines stay silent.
package progress

// Reporter receives the size of a piece of work and its advance, in bytes.
type Reporter interface {
	Start(label string, total int64)
	Add(n int64)
	Finish()
}

// Silent reports nothing.
type Silent struct{}

func (Silent) Start(string, int64) {}
func (Silent) Add(int64)           {}
func (Silent) Finish()             {}

// Or returns r, or Silent when r is nil.
func Or(r Reporter) Reporter {
	if r == nil {
		return Silent{}
	}
	return r
}
