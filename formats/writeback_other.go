//go:build !linux

package formats

import "os"

func startWriteback(*os.File) {}
