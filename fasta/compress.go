package fasta

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression is how a FASTA source is compressed, as detected from its first bytes.
type Compression int

// The compressions a Reader decodes. Detection is by magic bytes only: the file name is never
// trusted (a gzip file named .fa is read as gzip, a plain file named .gz as plain).
const (
	Plain Compression = iota
	Gzip              // 1f 8b (gzip, bgzip; multi-member files included)
	XZ                // fd 37 7a 58 5a 00 (concatenated streams included)
	Zstd              // 28 b5 2f fd, or a skippable frame 5? 2a 4d 18 first (pzstd)
	Bzip2             // "BZh" and a block size digit 1-9 (concatenated streams included)
)

// String is the format's usual name: plain, gzip, xz, zstd or bzip2.
func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case XZ:
		return "xz"
	case Zstd:
		return "zstd"
	case Bzip2:
		return "bzip2"
	}
	return "plain"
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// magicLen is the most bytes detect looks at.
const magicLen = 6

// detect names the compression whose magic bytes b starts with.
func detect(b []byte) Compression {
	switch {
	case bytes.HasPrefix(b, gzipMagic):
		return Gzip
	case bytes.HasPrefix(b, xzMagic):
		return XZ
	case bytes.HasPrefix(b, zstdMagic),
		len(b) >= 4 && b[0]&0xf0 == 0x50 && b[1] == 0x2a && b[2] == 0x4d && b[3] == 0x18:
		return Zstd
	case len(b) >= 4 && b[0] == 'B' && b[1] == 'Z' && b[2] == 'h' && b[3] >= '1' && b[3] <= '9':
		return Bzip2
	}
	return Plain
}

// suffixCompression is the compression a file name's suffix claims (Plain when it claims none).
func suffixCompression(name string) Compression {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".gz", ".bgz", ".gzip":
		return Gzip
	case ".xz":
		return XZ
	case ".zst", ".zstd":
		return Zstd
	case ".bz2", ".bzip2":
		return Bzip2
	}
	return Plain
}

// mislabelled says why data of compression c in a file called name may not be FASTA when the
// name claims another compression ("" when it does not).
func mislabelled(name string, c Compression) string {
	claimed := suffixCompression(name)
	if claimed == Plain || claimed == c {
		return ""
	}
	return fmt.Sprintf("the name ends in %s but the data is %s, not %s: is the file mislabelled or damaged?",
		filepath.Ext(name), c, claimed)
}

// decompress returns a reader of br's decoded content for c, and the function that releases the
// decoder (the zstd decoder holds buffers until closed).
func decompress(br *bufio.Reader, c Compression) (io.Reader, func(), error) {
	nop := func() {}
	switch c {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, nop, nil
	case XZ:
		zr, err := xz.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		return zr, nop, nil
	case Zstd:
		// One decoder, decoding synchronously: no goroutines to leak when a caller never closes
		// the Reader, and decompression is far from the bottleneck of an embedding job.
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	case Bzip2:
		return bzip2.NewReader(br), nop, nil
	}
	return br, nop, nil
}

// readError is the cause of a ParseError for a failed read: it names the compression and says
// plainly when the compressed data ended early (a truncated download, a partial copy).
func readError(c Compression, err error) error {
	if c == Plain {
		return fmt.Errorf("read: %w", err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read %s data: %w (the compressed data ends early: the file is truncated)", c, err)
	}
	return fmt.Errorf("read %s data: %w (the file is corrupt)", c, err)
}
