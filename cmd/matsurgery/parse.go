package main

import (
	"fmt"
	"strconv"
	"strings"
)

func upper(s string) string { return strings.ToUpper(strings.TrimSpace(s)) }

// parseBytes parses 5GB, 500MB, 2GiB, 1048576.
func parseBytes(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.m
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 5GB, 500MB, 2GiB)", s)
	}
	return int64(f * float64(mult)), nil
}
