package testenv

import (
	"bufio"
	"bytes"
	"strings"
	"sync"
)

// Buffer is a goroutine-safe output sink: os/exec (or a server under test)
// writes to it from its own goroutine while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns what was written so far, line by line; lines up to 1 MiB
// long (a JSON log line with a large field) are kept whole.
func (b *Buffer) Lines() []string {
	return splitLines(b.String())
}

func splitLines(s string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}
