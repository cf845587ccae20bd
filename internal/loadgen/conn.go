package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Conn is a minimal HTTP/1.1 client connection: one request at a time,
// kept alive. It writes pre-built request bytes in one write and reads the
// response into a reused buffer without allocating, so the load generator's
// own CPU, on the same two cores as everything it measures, stays small.
type Conn struct {
	addr    string
	timeout time.Duration // bound on one request
	nc      net.Conn
	br      *bufio.Reader
}

// NewConn is a connection to addr, dialed on the first request; timeout
// bounds each request.
func NewConn(addr string, timeout time.Duration) *Conn {
	return &Conn{addr: addr, timeout: timeout}
}

// roundTrip sends req (a complete HTTP/1.1 request) and returns the status.
// After an error the connection is closed and the next call redials.
func (c *Conn) RoundTrip(req []byte) (int, error) {
	if c.nc == nil {
		nc, err := net.DialTimeout("tcp", c.addr, c.timeout)
		if err != nil {
			return 0, err
		}
		c.nc = nc
		if c.br == nil {
			c.br = bufio.NewReaderSize(nc, 16<<10)
		} else {
			c.br.Reset(nc)
		}
	}
	if err := c.nc.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		c.Close()
		return 0, err
	}
	if _, err := c.nc.Write(req); err != nil {
		c.Close()
		return 0, err
	}
	status, keepAlive, err := ReadResponse(c.br)
	if err != nil {
		c.Close()
		return 0, err
	}
	if !keepAlive {
		c.Close()
	}
	return status, nil
}

// Close closes the connection; the next request redials.
func (c *Conn) Close() {
	if c.nc != nil {
		_ = c.nc.Close()
		c.nc = nil
	}
}

// errMalformed is a response this client cannot parse.
var errMalformed = errors.New("malformed HTTP response")

// ReadResponse reads one response and discards its body. Interim (1xx)
// responses are skipped. keepAlive is false when the server will close.
func ReadResponse(br *bufio.Reader) (status int, keepAlive bool, err error) {
	for {
		line, err := readLine(br)
		if err != nil {
			return 0, false, err
		}
		// "HTTP/1.1 200 OK"
		if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
			return 0, false, fmt.Errorf("%w: status line %q", errMalformed, line)
		}
		code, ok := parseUint(line[9:12], 10)
		if !ok {
			return 0, false, fmt.Errorf("%w: status line %q", errMalformed, line)
		}
		status = int(code)
		keepAlive = line[7] == '1'
		h, err := readHeaders(br, keepAlive)
		if err != nil {
			return 0, false, err
		}
		if status >= 100 && status < 200 {
			continue
		}
		keepAlive, err = discardBody(br, status, h)
		return status, keepAlive, err
	}
}

// header is what ReadResponse needs from the response headers.
type header struct {
	length    int64 // -1: not given
	chunked   bool
	keepAlive bool
}

func readHeaders(br *bufio.Reader, keepAlive bool) (header, error) {
	h := header{length: -1, keepAlive: keepAlive}
	for {
		line, err := readLine(br)
		if err != nil {
			return h, err
		}
		if len(line) == 0 {
			return h, nil
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return h, fmt.Errorf("%w: header line %q", errMalformed, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			n, ok := parseUint(value, 10)
			if !ok {
				return h, fmt.Errorf("%w: content-length %q", errMalformed, value)
			}
			h.length = n
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			h.chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("connection")):
			if bytes.EqualFold(value, []byte("close")) {
				h.keepAlive = false
			} else if bytes.EqualFold(value, []byte("keep-alive")) {
				h.keepAlive = true
			}
		}
	}
}

// discardBody reads the body away and says whether the connection can
// carry another request.
func discardBody(br *bufio.Reader, status int, h header) (bool, error) {
	switch {
	case status == 204 || status == 304:
		return h.keepAlive, nil
	case h.chunked:
		return h.keepAlive, discardChunked(br)
	case h.length >= 0:
		_, err := br.Discard(int(h.length))
		return h.keepAlive, err
	default:
		// No length: the body runs to the end of the connection.
		_, err := io.Copy(io.Discard, br)
		return false, err
	}
}

// discardChunked reads a chunked body: size lines, data, then trailers.
func discardChunked(br *bufio.Reader) error {
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		size, ok := parseUint(bytes.TrimSpace(line), 16)
		if !ok {
			return fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if size == 0 {
			for { // trailers, up to the empty line
				line, err := readLine(br)
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
		}
		if _, err := br.Discard(int(size) + 2); err != nil { // data and its CRLF
			return err
		}
	}
}

// readLine returns the next line without its CRLF; the slice is only valid
// until the next read.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// parseUint parses a non-negative decimal or hexadecimal number without
// allocating, up to 2^60.
func parseUint(b []byte, base int64) (int64, bool) {
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		var d int64
		switch {
		case c >= '0' && c <= '9':
			d = int64(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = int64(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = int64(c-'A') + 10
		default:
			return 0, false
		}
		n = n*base + d
	}
	return n, true
}
