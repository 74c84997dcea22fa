package optim

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
)

// The saved state, version 1, all little-endian:
//
//	"MTSADAMW"                         magic, 8 bytes
//	u32 version (1)
//	f64 LR, Beta1, Beta2, Eps, WeightDecay
//	i64 steps
//	u32 parameter count
//	per parameter: u32 name length, name, u8 decay (0/1), u64 element count
//	u32 CRC-32C of every byte above
//	per parameter: m (count × f32), then v (count × f32)
//	u32 CRC-32C of every byte above, header included
//
// The header has its own checksum so that sizes are trusted before any
// allocation; the trailer covers the whole stream.
const (
	stateMagic   = "MTSADAMW"
	stateVersion = 1

	maxNameLen    = 1 << 12
	maxParamCount = 1 << 20
	maxElements   = 1 << 40
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptState is wrapped by Load's error when the bytes are not a
// saved state: a wrong magic, a checksum mismatch, a truncated stream.
var ErrCorruptState = errors.New("corrupt optimiser state")

// Save writes the hyperparameters (Workers excepted), the step count and
// every parameter's moments. An optimiser that has not stepped yet saves
// no parameters.
func (o *AdamW) Save(w io.Writer) error {
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 1<<20)

	var h bytes.Buffer
	h.WriteString(stateMagic)
	le := binary.LittleEndian
	h.Write(le.AppendUint32(nil, stateVersion))
	for _, x := range []float64{o.LR, o.Beta1, o.Beta2, o.Eps, o.WeightDecay} {
		h.Write(le.AppendUint64(nil, math.Float64bits(x)))
	}
	h.Write(le.AppendUint64(nil, uint64(o.steps)))
	h.Write(le.AppendUint32(nil, uint32(len(o.state))))
	for _, s := range o.state {
		if len(s.name) > maxNameLen {
			return fmt.Errorf("save optimiser state: parameter name of %d bytes (at most %d): %.40s…", len(s.name), maxNameLen, s.name)
		}
		h.Write(le.AppendUint32(nil, uint32(len(s.name))))
		h.WriteString(s.name)
		decay := byte(0)
		if s.decay {
			decay = 1
		}
		h.WriteByte(decay)
		h.Write(le.AppendUint64(nil, uint64(len(s.m))))
	}
	if _, err := bw.Write(h.Bytes()); err != nil {
		return fmt.Errorf("save optimiser state: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("save optimiser state: %w", err)
	}
	if _, err := bw.Write(le.AppendUint32(nil, crc.Sum32())); err != nil {
		return fmt.Errorf("save optimiser state: %w", err)
	}

	buf := make([]byte, 0, 1<<16)
	for _, s := range o.state {
		for _, xs := range [][]float32{s.m, s.v} {
			for lo := 0; lo < len(xs); lo += cap(buf) / 4 {
				buf = buf[:0]
				for _, x := range xs[lo:min(len(xs), lo+cap(buf)/4)] {
					buf = le.AppendUint32(buf, math.Float32bits(x))
				}
				if _, err := bw.Write(buf); err != nil {
					return fmt.Errorf("save optimiser state: parameter %s: %w", s.name, err)
				}
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("save optimiser state: %w", err)
	}
	if _, err := w.Write(le.AppendUint32(nil, crc.Sum32())); err != nil {
		return fmt.Errorf("save optimiser state: %w", err)
	}
	return nil
}

// Load replaces the optimiser's hyperparameters (Workers excepted), step
// count and moments with those Save wrote. It reads exactly what Save
// wrote and no further. Nothing changes unless the whole state reads back
// with matching checksums; a damaged stream gives an error wrapping
// ErrCorruptState.
func (o *AdamW) Load(r io.Reader) error {
	tmp, err := load(r)
	if err != nil {
		return fmt.Errorf("load optimiser state: %w", err)
	}
	tmp.Workers = o.Workers
	*o = *tmp
	return nil
}

func load(r io.Reader) (*AdamW, error) {
	cr := &crcReader{r: r, crc: crc32.New(castagnoli)}
	le := binary.LittleEndian

	magic := make([]byte, len(stateMagic))
	if err := cr.full(magic); err != nil {
		return nil, err
	}
	if string(magic) != stateMagic {
		return nil, fmt.Errorf("magic %q, want %q: %w", magic, stateMagic, ErrCorruptState)
	}
	var fixed [4 + 5*8 + 8 + 4]byte
	if err := cr.full(fixed[:]); err != nil {
		return nil, err
	}
	if v := le.Uint32(fixed[:]); v != stateVersion {
		return nil, fmt.Errorf("version %d, this build reads version %d", v, stateVersion)
	}
	var o AdamW
	for i, x := range []*float64{&o.LR, &o.Beta1, &o.Beta2, &o.Eps, &o.WeightDecay} {
		*x = math.Float64frombits(le.Uint64(fixed[4+8*i:]))
	}
	o.steps = int64(le.Uint64(fixed[44:]))
	count := le.Uint32(fixed[52:])
	if count > maxParamCount || o.steps < 0 {
		return nil, fmt.Errorf("%d parameters after %d steps: %w", count, o.steps, ErrCorruptState)
	}
	state := make([]moments, count)
	sizes := make([]uint64, count)
	for i := range state {
		var n [4]byte
		if err := cr.full(n[:]); err != nil {
			return nil, err
		}
		nameLen := le.Uint32(n[:])
		if nameLen > maxNameLen {
			return nil, fmt.Errorf("parameter %d: name of %d bytes: %w", i, nameLen, ErrCorruptState)
		}
		rest := make([]byte, nameLen+1+8)
		if err := cr.full(rest); err != nil {
			return nil, err
		}
		state[i].name = string(rest[:nameLen])
		state[i].decay = rest[nameLen] != 0
		sizes[i] = le.Uint64(rest[nameLen+1:])
		if sizes[i] > maxElements {
			return nil, fmt.Errorf("parameter %s: %d elements: %w", state[i].name, sizes[i], ErrCorruptState)
		}
	}
	if err := cr.checksum("header"); err != nil {
		return nil, err
	}

	buf := make([]byte, 1<<16)
	for i := range state {
		s := &state[i]
		n := int(sizes[i])
		s.m, s.v = make([]float32, n), make([]float32, n)
		for _, xs := range [][]float32{s.m, s.v} {
			for lo := 0; lo < n; lo += len(buf) / 4 {
				part := xs[lo:min(n, lo+len(buf)/4)]
				b := buf[:4*len(part)]
				if err := cr.full(b); err != nil {
					return nil, fmt.Errorf("parameter %s: %w", s.name, err)
				}
				for j := range part {
					part[j] = math.Float32frombits(le.Uint32(b[4*j:]))
				}
			}
		}
	}
	if err := cr.checksum("data"); err != nil {
		return nil, err
	}
	if count > 0 {
		o.state = state // with none, the first Step creates the moments
	}
	return &o, nil
}

// MarshalBinary is Save into memory.
func (o *AdamW) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	if err := o.Save(&b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// UnmarshalBinary is Load from memory; bytes after the state are an error.
func (o *AdamW) UnmarshalBinary(data []byte) error {
	r := bytes.NewReader(data)
	tmp, err := load(r)
	if err != nil {
		return fmt.Errorf("load optimiser state: %w", err)
	}
	if r.Len() != 0 {
		return fmt.Errorf("load optimiser state: %d bytes after the end of the state: %w", r.Len(), ErrCorruptState)
	}
	tmp.Workers = o.Workers
	*o = *tmp
	return nil
}

// SaveFile writes the state to path atomically: to a temporary file in the
// same directory, synced, then renamed over path.
func (o *AdamW) SaveFile(path string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("save optimiser state %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := o.Save(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save optimiser state %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save optimiser state %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("save optimiser state %s: %w", path, err)
	}
	return nil
}

// LoadFile is Load from the file at path; bytes after the state are an
// error.
func (o *AdamW) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load optimiser state: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	tmp, err := load(br)
	if err != nil {
		return fmt.Errorf("load optimiser state %s: %w", path, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return fmt.Errorf("load optimiser state %s: bytes after the end of the state: %w", path, ErrCorruptState)
	}
	tmp.Workers = o.Workers
	*o = *tmp
	return nil
}

// crcReader reads exact lengths and keeps a running CRC of what it read.
type crcReader struct {
	r   io.Reader
	crc hash.Hash32
}

func (c *crcReader) full(b []byte) error {
	if _, err := io.ReadFull(c.r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("truncated: %w", ErrCorruptState)
		}
		return err
	}
	c.crc.Write(b)
	return nil
}

// checksum reads the stored CRC of everything so far and compares it with
// the running one, which then continues over the stored CRC's bytes too.
func (c *crcReader) checksum(part string) error {
	want := c.crc.Sum32()
	var b [4]byte
	if err := c.full(b[:]); err != nil {
		return err
	}
	if got := binary.LittleEndian.Uint32(b[:]); got != want {
		return fmt.Errorf("%s checksum %08x, computed %08x: %w", part, got, want, ErrCorruptState)
	}
	return nil
}
