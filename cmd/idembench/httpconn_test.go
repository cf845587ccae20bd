package main

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

func reader(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 64) }

func TestReadResponse(t *testing.T) {
	t.Run("content-length body, kept alive, next response readable", func(t *testing.T) {
		br := reader("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" +
			"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}")
		status, keep, err := readResponse(br)
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.True(t, keep)
		status, _, err = readResponse(br)
		require.NoError(t, err)
		require.Equal(t, 409, status)
		_, err = br.ReadByte()
		require.ErrorIs(t, err, io.EOF)
	})

	t.Run("chunked body with extensions and trailers", func(t *testing.T) {
		br := reader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;ext=1\r\nhello\r\n1A\r\n" + strings.Repeat("x", 26) + "\r\n0\r\nX-Trailer: y\r\n\r\nNEXT")
		status, keep, err := readResponse(br)
		require.NoError(t, err)
		require.Equal(t, 200, status)
		require.True(t, keep)
		rest, _ := io.ReadAll(br)
		require.Equal(t, "NEXT", string(rest))
	})

	t.Run("interim responses are skipped", func(t *testing.T) {
		status, _, err := readResponse(reader("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.Equal(t, 201, status)
	})

	t.Run("connection close and bodies without length end the connection", func(t *testing.T) {
		_, keep, err := readResponse(reader("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.False(t, keep)
		_, keep, err = readResponse(reader("HTTP/1.1 200 OK\r\n\r\nuntil the end"))
		require.NoError(t, err)
		require.False(t, keep)
		_, keep, err = readResponse(reader("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
		require.NoError(t, err)
		require.False(t, keep)
	})

	t.Run("no body for 204", func(t *testing.T) {
		status, keep, err := readResponse(reader("HTTP/1.1 204 No Content\r\n\r\n"))
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
			_, _, err := readResponse(reader(resp))
			require.Error(t, err, resp)
		}
	})
}

func TestHTTPConn_RoundTrip(t *testing.T) {
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
		c := newHTTPConn(srv.Listener.Addr().String(), 5*time.Second)
		defer c.close()
		for _, key := range []string{"a", "close", "b"} {
			req := appendCharge(nil, func(b []byte) []byte { return append(b, key...) })
			status, err := c.roundTrip(req)
			require.NoError(t, err)
			require.Equal(t, http.StatusAccepted, status)
		}
		require.Equal(t, 3, n)
	})

	t.Run("an unreachable address is an error", func(t *testing.T) {
		addr, err := testenv.FreeAddr()
		require.NoError(t, err)
		_, err = newHTTPConn(addr, time.Second).roundTrip(appendCharge(nil, nil))
		require.Error(t, err)
	})
}
