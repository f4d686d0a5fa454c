package lapi

import (
	"strconv"
	"unsafe"
)

func itoa(i int) string { return strconv.Itoa(i) }

// unsafeStringData identifies a string's backing array, to tell whether two
// equal strings are one copy.
func unsafeStringData(s string) *byte { return unsafe.StringData(s) }
