package jpegdec

import "fmt"

// maxBlocksInMCU is libjpeg's D_MAX_BLOCKS_IN_MCU.
const maxBlocksInMCU = 10

// scan is one SOS: its components and spectral/successive-approximation parameters.
type scan struct {
	comps          []*component
	ss, se, ah, al int
}

// parseAndDecodeScan reads an SOS header and decodes the entropy-coded data that starts at pos. It
// returns where the search for the next marker resumes.
func (d *decoder) parseAndDecodeScan(seg []byte, pos int) (int, error) {
	if len(seg) < 1 {
		return 0, FormatError("SOS segment too short")
	}
	ns := int(seg[0])
	if ns < 1 || ns > len(d.comps) || len(seg) != 4+2*ns {
		return 0, FormatError(fmt.Sprintf("SOS with %d components", ns))
	}
	sc := scan{
		ss: int(seg[1+2*ns]), se: int(seg[2+2*ns]),
		ah: int(seg[3+2*ns] >> 4), al: int(seg[3+2*ns] & 15),
	}
	blocks := 0
	for i := 0; i < ns; i++ {
		id := seg[1+2*i]
		var c *component
		for _, cc := range d.comps {
			if cc.id == id {
				c = cc
			}
		}
		if c == nil {
			return 0, FormatError(fmt.Sprintf("SOS names component %d, which the frame does not have", id))
		}
		for _, prev := range sc.comps {
			if prev == c {
				return 0, FormatError(fmt.Sprintf("SOS names component %d twice", id))
			}
		}
		c.dcTab, c.acTab = int(seg[2+2*i]>>4), int(seg[2+2*i]&15)
		if c.dcTab > 3 || c.acTab > 3 {
			return 0, FormatError(fmt.Sprintf("component %d: Huffman table selectors %d/%d", id, c.dcTab, c.acTab))
		}
		sc.comps = append(sc.comps, c)
		blocks += c.h * c.v
	}
	if ns > 1 && blocks > maxBlocksInMCU {
		return 0, FormatError(fmt.Sprintf("%d blocks per MCU (at most %d)", blocks, maxBlocksInMCU))
	}
	if err := d.prepareScan(&sc); err != nil {
		return 0, err
	}
	d.scans++
	return d.decodeScan(&sc, pos)
}

// prepareScan checks the scan parameters as libjpeg does, latches quantisation tables and checks that
// the Huffman tables the scan needs exist.
func (d *decoder) prepareScan(sc *scan) error {
	dcScan := sc.ss == 0
	if d.progressive {
		bad := false
		if dcScan {
			bad = sc.se != 0
		} else {
			bad = sc.ss > sc.se || sc.se > 63 || len(sc.comps) != 1
		}
		if sc.ah != 0 && sc.al != sc.ah-1 {
			bad = true
		}
		if sc.al > 13 {
			bad = true
		}
		if bad {
			return FormatError(fmt.Sprintf("invalid progressive scan Ss=%d Se=%d Ah=%d Al=%d", sc.ss, sc.se, sc.ah, sc.al))
		}
		for _, c := range sc.comps {
			for k := sc.ss; k <= sc.se; k++ {
				c.coefBits[k] = sc.al
			}
		}
	}
	for _, c := range sc.comps {
		if !c.quantSeen {
			q := d.quant[c.tq]
			if q == nil {
				return FormatError(fmt.Sprintf("component %d uses quantisation table %d, which is not defined", c.id, c.tq))
			}
			cp := *q
			c.quant = &cp
			c.quantSeen = true
		}
		c.scanned = true
		needDC := !d.progressive || (dcScan && sc.ah == 0)
		needAC := !d.progressive || !dcScan
		if needDC && d.dc[c.dcTab] == nil {
			return UnsupportedError(fmt.Sprintf("component %d uses DC Huffman table %d, which the file does not define", c.id, c.dcTab))
		}
		if needAC && d.ac[c.acTab] == nil {
			return UnsupportedError(fmt.Sprintf("component %d uses AC Huffman table %d, which the file does not define", c.id, c.acTab))
		}
	}
	return nil
}

// decodeScan decodes the MCUs of one scan.
func (d *decoder) decodeScan(sc *scan, pos int) (int, error) {
	br := newBitReader(d.data, pos)
	for _, c := range sc.comps {
		c.pred = 0
	}
	d.eobrun = 0
	nextRST := 0
	toGo := d.restart

	// The MCUs: every block of the component in a one-component scan, MCU by MCU otherwise.
	var mcus, perRow int
	if len(sc.comps) == 1 {
		c := sc.comps[0]
		perRow = c.bw
		mcus = c.bw * c.bh
	} else {
		perRow = d.mcusX
		mcus = d.mcusX * d.mcusY
	}
	for m := 0; m < mcus; m++ {
		if d.restart > 0 {
			if toGo == 0 {
				if err := d.processRestart(&br, nextRST, sc); err != nil {
					return 0, err
				}
				nextRST = (nextRST + 1) & 7
				toGo = d.restart
			}
			toGo--
		}
		mx, my := m%perRow, m/perRow
		// libjpeg checks for exhausted data once per MCU: the MCU where the data ran out is finished
		// with zero bits, the following ones are not decoded.
		skip := br.insufficient
		if len(sc.comps) == 1 {
			if err := d.decodeBlock(&br, sc, sc.comps[0], my, mx, skip); err != nil {
				return 0, err
			}
			continue
		}
		for _, c := range sc.comps {
			for v := 0; v < c.v; v++ {
				for h := 0; h < c.h; h++ {
					if err := d.decodeBlock(&br, sc, c, my*c.v+v, mx*c.h+h, skip); err != nil {
						return 0, err
					}
				}
			}
		}
	}
	if br.insufficient {
		d.corrupt = true
	}
	if len(sc.comps) == len(d.comps) && !d.progressive {
		d.fullScan = true
	}
	if br.marker >= 0 {
		return br.marker - 1, nil // the byte before the code is an 0xFF
	}
	return br.pos, nil
}

// decodeBlock decodes one block (at block row by, column bx of component c). With skip (the data ran
// short in an earlier MCU), libjpeg does not decode: sequential blocks become all-zero (uniform grey),
// progressive ones keep what earlier scans gave them.
func (d *decoder) decodeBlock(br *bitReader, sc *scan, c *component, by, bx int, skip bool) error {
	if !d.progressive {
		var blk [64]int16
		if !skip {
			if err := d.decodeSequential(br, c, &blk); err != nil {
				return err
			}
		}
		off := by*8*c.stride + bx*8
		idctBlock(&blk, c.quant, c.plane[off:], c.stride)
		return nil
	}
	if skip {
		return nil
	}
	blk := &c.coefs[by*c.bwa+bx]
	switch {
	case sc.ss == 0 && sc.ah == 0:
		return d.decodeDCFirst(br, sc, c, blk)
	case sc.ss == 0:
		bit, err := br.bit()
		if err != nil {
			return err
		}
		if bit {
			blk[0] |= int16(1) << sc.al
		}
		return nil
	case sc.ah == 0:
		return d.decodeACFirst(br, sc, c, blk)
	default:
		return d.decodeACRefine(br, sc, c, blk)
	}
}

// decodeSequential decodes a baseline/extended block: DC difference, then run-length coded AC.
func (d *decoder) decodeSequential(br *bitReader, c *component, blk *[64]int16) error {
	s, err := br.decode(d.dc[c.dcTab])
	if err != nil {
		return err
	}
	var diff int32
	if s != 0 {
		if diff, err = br.receiveExtend(int(s)); err != nil {
			return err
		}
	}
	c.pred += diff
	blk[0] = int16(c.pred)
	ac := d.ac[c.acTab]
	for k := 1; k < 64; k++ {
		rs, err := br.decode(ac)
		if err != nil {
			return err
		}
		r, s := int(rs>>4), int(rs&15)
		if s != 0 {
			k += r
			v, err := br.receiveExtend(s)
			if err != nil {
				return err
			}
			blk[natural[k]] = int16(v)
		} else {
			if r != 15 {
				break
			}
			k += 15
		}
	}
	return nil
}

func (d *decoder) decodeDCFirst(br *bitReader, sc *scan, c *component, blk *[64]int16) error {
	s, err := br.decode(d.dc[c.dcTab])
	if err != nil {
		return err
	}
	var diff int32
	if s != 0 {
		if diff, err = br.receiveExtend(int(s)); err != nil {
			return err
		}
	}
	c.pred += diff
	blk[0] = int16(c.pred << sc.al)
	return nil
}

func (d *decoder) decodeACFirst(br *bitReader, sc *scan, c *component, blk *[64]int16) error {
	if d.eobrun > 0 {
		d.eobrun--
		return nil
	}
	ac := d.ac[c.acTab]
	for k := sc.ss; k <= sc.se; k++ {
		rs, err := br.decode(ac)
		if err != nil {
			return err
		}
		r, s := int(rs>>4), int(rs&15)
		if s != 0 {
			k += r
			v, err := br.receiveExtend(s)
			if err != nil {
				return err
			}
			blk[natural[k]] = int16(v << sc.al)
			continue
		}
		if r == 15 {
			k += 15
			continue
		}
		d.eobrun = 1 << r
		if r != 0 {
			extra, err := br.bits(r)
			if err != nil {
				return err
			}
			d.eobrun += int(extra)
		}
		d.eobrun--
		break
	}
	return nil
}

// refine appends a correction bit to an already non-zero coefficient.
func refine(br *bitReader, coef *int16, p1 int16) error {
	bit, err := br.bit()
	if err != nil {
		return err
	}
	if bit && *coef&p1 == 0 {
		if *coef >= 0 {
			*coef += p1
		} else {
			*coef -= p1
		}
	}
	return nil
}

func (d *decoder) decodeACRefine(br *bitReader, sc *scan, c *component, blk *[64]int16) error {
	p1 := int16(1) << sc.al
	k := sc.ss
	if d.eobrun == 0 {
		ac := d.ac[c.acTab]
		for ; k <= sc.se; k++ {
			rs, err := br.decode(ac)
			if err != nil {
				return err
			}
			r, s := int(rs>>4), int(rs&15)
			var newCoef int16
			if s != 0 {
				// The size of a newly non-zero coefficient is always 1; libjpeg only warns otherwise.
				bit, err := br.bit()
				if err != nil {
					return err
				}
				if bit {
					newCoef = p1
				} else {
					newCoef = -p1
				}
			} else if r != 15 {
				d.eobrun = 1 << r
				if r != 0 {
					extra, err := br.bits(r)
					if err != nil {
						return err
					}
					d.eobrun += int(extra)
				}
				break
			}
			// Skip already non-zero coefficients (refining them) and r zero ones.
			for ; k <= sc.se; k++ {
				coef := &blk[natural[k]]
				if *coef != 0 {
					if err := refine(br, coef, p1); err != nil {
						return err
					}
				} else {
					r--
					if r < 0 {
						break
					}
				}
			}
			if newCoef != 0 {
				blk[natural[k]] = newCoef
			}
		}
	}
	if d.eobrun > 0 {
		for ; k <= sc.se; k++ {
			coef := &blk[natural[k]]
			if *coef != 0 {
				if err := refine(br, coef, p1); err != nil {
					return err
				}
			}
		}
		d.eobrun--
	}
	return nil
}

// processRestart handles the restart boundary before an MCU as libjpeg does: buffered bits are
// dropped, the expected RSTn marker is consumed, predictors and the EOB run are reset. An unexpected
// marker is handled with libjpeg's jpeg_resync_to_restart policy.
func (d *decoder) processRestart(br *bitReader, expected int, sc *scan) error {
	br.reset()
	var code byte
	var at int
	if br.marker >= 0 {
		at = br.marker
		code = d.data[at]
	} else {
		var ok bool
		if code, at, ok = nextMarker(d.data, br.pos); !ok {
			return ErrTruncated
		}
	}
	for _, c := range sc.comps {
		c.pred = 0
	}
	d.eobrun = 0
	if int(code) == mRST0+expected {
		*br = newBitReader(d.data, at+1)
		return nil
	}
	d.corrupt = true
	for {
		action := 1
		switch {
		case code < mSOF0:
			action = 2 // invalid marker
		case code < mRST0 || code > mRST7:
			action = 3 // a real marker: leave it for later
		default:
			n := int(code) - mRST0
			switch n {
			case (expected + 1) & 7, (expected + 2) & 7:
				action = 3
			case (expected - 1) & 7, (expected - 2) & 7:
				action = 2
			}
		}
		switch action {
		case 1: // discard the marker and resume after it
			*br = newBitReader(d.data, at+1)
			return nil
		case 2: // skip to the next marker and decide again
			var ok bool
			if code, at, ok = nextMarker(d.data, at+1); !ok {
				return ErrTruncated
			}
		default: // stay at the marker: the segment reads as empty
			insufficient := br.insufficient
			*br = bitReader{data: d.data, pos: at, marker: at, insufficient: insufficient}
			return nil
		}
	}
}
