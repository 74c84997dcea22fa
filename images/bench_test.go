package images

import (
	"bytes"
	"image"
	"image/jpeg"
	"math/rand/v2"
	"testing"
)

// benchPicture is a 1024×768 photograph-like picture (smooth colours plus noise).
func benchPicture(b *testing.B) *RGB {
	b.Helper()
	return randomRGB(rand.New(rand.NewPCG(1024, 768)), 1024, 768)
}

// BenchmarkPreprocess384From1024x768 is the vision-tower input of one training sample: resize a
// decoded 1024×768 picture to 384×384 and normalise it.
func BenchmarkPreprocess384From1024x768(b *testing.B) {
	img := benchPicture(b)
	dst := make([]float32, 3*384*384)
	for b.Loop() {
		if err := PreprocessInto(dst, img, 384, Square); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPreprocess384From1024x768Pad(b *testing.B) {
	img := benchPicture(b)
	dst := make([]float32, 3*384*384)
	for b.Loop() {
		if err := PreprocessInto(dst, img, 384, Pad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeJPEG1024x768 decodes a quality-90 4:2:0 JPEG with this package's decoder (Pillow's
// pixels) and, for comparison, with image/jpeg converted to RGB (not Pillow's pixels).
func BenchmarkDecodeJPEG1024x768(b *testing.B) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, benchPicture(b), &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	b.Run("images", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := Decode(data, LoadOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("image-jpeg", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			img, err := jpeg.Decode(bytes.NewReader(data))
			if err != nil {
				b.Fatal(err)
			}
			_ = ToRGB(img)
		}
	})
}

// BenchmarkLoadAndPreprocess is the whole per-sample image path from JPEG bytes.
func BenchmarkLoadAndPreprocess(b *testing.B) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, benchPicture(b), &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	data := buf.Bytes()
	dst := make([]float32, 3*384*384)
	for b.Loop() {
		img, err := Decode(data, LoadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := PreprocessInto(dst, img, 384, Square); err != nil {
			b.Fatal(err)
		}
	}
}

var _ image.Image = (*RGB)(nil)
