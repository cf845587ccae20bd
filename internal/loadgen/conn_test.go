package loadgen

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemproxy/idemproxy/internal/testenv"
)

// post is a complete request, with an idempotency key unless key is "".
func post(key string) []byte {
	req := "POST /charge HTTP/1.1\r\nHost: bench.local\r\n"
	if key != "" {
		req += "Idempotency-Key: " + key + "\r\n"
	}
	return []byte(req + "Content-Length: 2\r\n\r\n{}")
}

func reader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 64) }

func TestReadResponse(t *testing.T) {
	t.Run("content-length body, kept alive, next response readable", func(t *testing.T) {
		br := reader("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" +
			"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}")
		status, keep, err := ReadResponse(br)
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.True(t, keep)
		status, _, err = ReadResponse(br)
		require.NoError(t, err)
		require.Equal(t, 409, status)
		_, err = br.ReadByte()
		require.ErrorIs(t, err, io.EOF)
	})

	t.Run("chunked body with extensions and trailers", func(t *testing.T) {
		br := reader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;ext=1\r\nhello\r\n1A\r\n" + strings.Repeat("x", 26) + "\r\n0\r\nX-Trailer: y\r\n\r\nNEXT")
		status, keep, err := ReadResponse(br)
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.True(t, keep)
		rest, _ := io.ReadAll(br)
		require.Equal(t, "NEXT", string(rest))
	})

	t.Run("interim responses are skipped", func(t *testing.T) {
		status, _, err := ReadResponse(reader("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.Equal(t, 201, status)
	})

	t.Run("connection close and bodies without length end the connection", func(t *testing.T) {
		_, keep, err := ReadResponse(reader("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.False(t, keep)
		_, keep, err = ReadResponse(reader("HTTP/1.1 200 OK\r\n\r\nuntil the end"))
		require.NoError(t, err)
		require.False(t, keep)
		_, keep, err = ReadResponse(reader("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.False(t, keep)
	})

	t.Run("no body for 204", func(t *testing.T) {
		status, keep, err := ReadResponse(reader("HTTP/1.1 204 No Content\r\n\r\n"))
		require.NoError(t, err)
		require.Equal(t, 204, status)
		require.True(t, keep)
	})

	t.Run("malformed responses and cut bodies are errors", func(t *testing.T) {
		for _, resp := range []string{
			"SMTP ready\r\n",
			"HTTP/1.1 2x0 OK\r\n\r\n",
			"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
			"HTTP/1.1 200 OK\r\nContent-Le",
		} {
			_, _, err := ReadResponse(reader(resp))
			require.Error(t, err, resp)
		}
	})
}

func TestConn_RoundTrip(t *testing.T) {
	t.Run("keeps the connection and redials after the server closes it", func(t *testing.T) {
		var n int
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n++
			if r.Header.Get("Idempotency-Key") == "close" {
				w.Header().Set("Connection", "close")
			}
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.Copy(w, r.Body)
		}))
		defer srv.Close()
		c := NewConn(srv.Listener.Addr().String(), 5*time.Second)
		defer c.Close()
		for _, key := range []string{"a", "close", "b"} {
			req := post(key)
			status, err := c.RoundTrip(req)
			require.NoError(t, err)
			require.Equal(t, http.StatusAccepted, status)
		}
		require.Equal(t, 3, n)
	})

	t.Run("an unreachable address is an error", func(t *testing.T) {
		addr, err := testenv.FreeAddr()
		require.NoError(t, err)
		_, err = NewConn(addr, time.Second).RoundTrip(post(""))
		require.Error(t, err)
	})
}
