package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"

	"github.com/matsurgery/matsurgery/images/internal/jpegdec"
)

// LoadOptions changes how a picture is loaded.
type LoadOptions struct {
	// ApplyEXIF turns the picture upright according to its EXIF Orientation tag (or, lacking one, its
	// XMP tiff:Orientation), as PIL.ImageOps.exif_transpose does. TinyLLaVA does not do this (it calls
	// Image.open(path).convert("RGB")), so the default, false, reproduces what the model was trained on.
	ApplyEXIF bool
	// AllowTruncated decodes a JPEG that ends before its image data does, as Pillow does with
	// ImageFile.LOAD_TRUNCATED_IMAGES = True (which TinyLLaVA sets): an EOI marker is appended and
	// libjpeg's handling of missing data applies (zero bits, then uniform grey). A truncated PNG is
	// still an error.
	AllowTruncated bool
}

// Format is an image file format, recognised from the file's first bytes (as PIL does, whatever the
// file name says).
type Format string

const (
	PNG  Format = "PNG"
	JPEG Format = "JPEG"
)

// maxPixels bounds the pixel count of a picture: Pillow's default MAX_IMAGE_PIXELS × 2, above which
// Pillow refuses to open a file (DecompressionBombError).
const maxPixels = 2 * 89478485

// ErrUnsupportedFormat is wrapped by the error for a recognised image format other than PNG and JPEG.
var ErrUnsupportedFormat = errors.New("unsupported image format")

// ErrNotImage is wrapped by the error for data that is no image format at all.
var ErrNotImage = errors.New("not an image")

// ErrTooLarge is wrapped by the error for a picture of more pixels than Pillow opens
// (2 × Image.MAX_IMAGE_PIXELS; Pillow raises DecompressionBombError).
var ErrTooLarge = errors.New("image too large")

// Load reads a PNG or JPEG file and returns its pixels as `PIL.Image.open(path).convert("RGB")` gives
// them (see the package documentation). Errors name the file.
func Load(path string) (*RGB, error) {
	return LoadWithOptions(path, LoadOptions{})
}

// LoadWithOptions is Load with options.
func LoadWithOptions(path string, opts LoadOptions) (*RGB, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load image: %w", err)
	}
	img, err := Decode(data, opts)
	if err != nil {
		return nil, fmt.Errorf("load image %s: %w", path, err)
	}
	return img, nil
}

// Decode decodes a PNG or JPEG file held in memory; see Load.
func Decode(data []byte, opts LoadOptions) (*RGB, error) {
	f, err := Sniff(data)
	if err != nil {
		return nil, err
	}
	var img *RGB
	var exif, xmp []byte
	switch f {
	case PNG:
		img, err = decodePNG(data)
		if err == nil && opts.ApplyEXIF {
			exif, xmp = pngMetadata(data)
		}
	case JPEG:
		var j *jpegdec.Image
		j, err = jpegdec.Decode(data, maxPixels)
		if errors.Is(err, jpegdec.ErrTruncated) && opts.AllowTruncated {
			j, err = jpegdec.Decode(append(data[:len(data):len(data)], 0xff, 0xd9), maxPixels)
		}
		if err == nil {
			img, err = fromJPEG(j)
			exif, xmp = j.EXIF, j.XMP
		}
		var limit *jpegdec.LimitError
		if errors.As(err, &limit) {
			err = fmt.Errorf("%w: %v", ErrTooLarge, err)
		}
		if errors.Is(err, jpegdec.ErrTruncated) {
			err = fmt.Errorf("%w (Pillow refuses it too unless ImageFile.LOAD_TRUNCATED_IMAGES is set: see LoadOptions.AllowTruncated)", err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	if opts.ApplyEXIF {
		img = Orient(img, orientationFrom(exif, xmp))
	}
	return img, nil
}

// Sniff recognises an image format from the first bytes of a file. PNG and JPEG are returned; other
// well-known formats give an error wrapping ErrUnsupportedFormat that names them, anything else
// ErrNotImage.
func Sniff(data []byte) (Format, error) {
	switch {
	case len(data) == 0:
		return "", fmt.Errorf("%w: the file is empty", ErrNotImage)
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		return PNG, nil
	case bytes.HasPrefix(data, []byte{0xff, 0xd8, 0xff}):
		return JPEG, nil
	}
	other := []struct {
		prefix, name string
	}{
		{"GIF87a", "GIF"}, {"GIF89a", "GIF"}, {"BM", "BMP"}, {"II*\x00", "TIFF"}, {"MM\x00*", "TIFF"},
		{"\x00\x00\x00\x0cjP  ", "JPEG 2000"}, {"\xff\x4f\xff\x51", "JPEG 2000"}, {"8BPS", "PSD"},
		{"\x00\x00\x01\x00", "ICO"}, {"qoif", "QOI"},
	}
	for _, o := range other {
		if bytes.HasPrefix(data, []byte(o.prefix)) {
			return "", fmt.Errorf("%w: %s (PNG and JPEG are supported)", ErrUnsupportedFormat, o.name)
		}
	}
	if len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP" {
		return "", fmt.Errorf("%w: WebP (PNG and JPEG are supported)", ErrUnsupportedFormat)
	}
	if len(data) >= 12 && string(data[4:8]) == "ftyp" {
		return "", fmt.Errorf("%w: HEIF/AVIF (PNG and JPEG are supported)", ErrUnsupportedFormat)
	}
	return "", fmt.Errorf("%w: unrecognised file signature % x", ErrNotImage, data[:min(len(data), 8)])
}

// decodePNG decodes with Go's lossless PNG decoder, then converts as PIL does. One case needs the
// header: 16-bit greyscale, which PIL holds as "I;16" and clips to 8 bits, whether or not it has a
// transparent colour (Go returns Gray16, or NRGBA64 when tRNS is present).
func decodePNG(data []byte) (*RGB, error) {
	if len(data) >= 33 && string(data[12:16]) == "IHDR" {
		w := int64(binary.BigEndian.Uint32(data[16:]))
		h := int64(binary.BigEndian.Uint32(data[20:]))
		if w*h > maxPixels {
			return nil, fmt.Errorf("%w: %d×%d pixels is more than the %d allowed", ErrTooLarge, w, h, int64(maxPixels))
		}
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil && (errors.Is(err, io.ErrUnexpectedEOF) || !pngComplete(data)) {
		return nil, fmt.Errorf("truncated PNG: the file ends before its IEND chunk (%w)", err)
	}
	if err != nil {
		return nil, err
	}
	gray16 := len(data) >= 26 && data[24] == 16 && data[25] == 0 // bit depth 16, colour type 0
	if m, ok := img.(*image.NRGBA64); ok && gray16 {
		b := m.Bounds()
		out := NewRGB(image.Rect(0, 0, b.Dx(), b.Dy()))
		for y := 0; y < b.Dy(); y++ {
			src := m.Pix[y*m.Stride:]
			dst := out.row(y)
			for x := 0; x < b.Dx(); x++ {
				v := clipGray16(src[8*x], src[8*x+1])
				dst[3*x], dst[3*x+1], dst[3*x+2] = v, v, v
			}
		}
		return out, nil
	}
	return ToRGB(img), nil
}

// pngComplete reports whether the PNG chunk list reaches an IEND chunk inside the data.
func pngComplete(data []byte) bool {
	for p := 8; p+8 <= len(data); {
		n := int64(binary.BigEndian.Uint32(data[p:]))
		if string(data[p+4:p+8]) == "IEND" {
			return true
		}
		if int64(p)+12+n > int64(len(data)) {
			return false
		}
		p += 12 + int(n)
	}
	return false
}

// fromJPEG converts a decoded JPEG (as Pillow holds it) to RGB.
func fromJPEG(j *jpegdec.Image) (*RGB, error) {
	r := image.Rect(0, 0, j.Width, j.Height)
	switch j.Channels {
	case 3:
		return &RGB{Pix: j.Pix, Stride: 3 * j.Width, Rect: r}, nil
	case 1:
		return ToRGB(&image.Gray{Pix: j.Pix, Stride: j.Width, Rect: r}), nil
	case 4:
		return ToRGB(&image.CMYK{Pix: j.Pix, Stride: 4 * j.Width, Rect: r}), nil
	}
	return nil, fmt.Errorf("%d channels", j.Channels)
}
