// A bare TCP relay for bench/ceiling.sh: the least any proxy can do to move a blob
// from the registry to a client. It accepts on one address, dials the registry for
// each connection and copies bytes both ways, nothing else: no HTTP, no
// authorization, no logging. Mode "splice" lets Go's io.Copy move the bytes with
// splice(2) (zero-copy between the two sockets, on Linux); mode "copy" hides the
// sockets' ReadFrom/WriteTo so the bytes go through a 256 KiB user-space buffer, the
// way a user-space proxy moves them. It is a measuring stick, never a product part:
// it must not be put in front of anything but a benchmark's loopback registry.
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

// plain hides *net.TCPConn's ReadFrom/WriteTo, so io.CopyBuffer cannot splice.
type plain struct{ c net.Conn }

func (p plain) Read(b []byte) (int, error)  { return p.c.Read(b) }
func (p plain) Write(b []byte) (int, error) { return p.c.Write(b) }

func main() {
	if len(os.Args) != 4 || (os.Args[3] != "splice" && os.Args[3] != "copy") {
		fmt.Fprintln(os.Stderr, "usage: relay LISTEN_ADDR UPSTREAM_ADDR splice|copy")
		os.Exit(2)
	}
	listen, upstream, mode := os.Args[1], os.Args[2], os.Args[3]
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		os.Exit(1)
	}
	fmt.Printf("relay ready: %s -> %s (%s)\n", ln.Addr(), upstream, mode)
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "relay: accept:", err)
			os.Exit(1)
		}
		go serve(c.(*net.TCPConn), upstream, mode)
	}
}

func serve(c *net.TCPConn, upstream, mode string) {
	defer c.Close()
	d, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	u := d.(*net.TCPConn)
	defer u.Close()
	pipe := func(dst, src *net.TCPConn) {
		if mode == "splice" {
			io.Copy(dst, src) // *TCPConn.ReadFrom(*TCPConn): splice(2) on Linux
		} else {
			io.CopyBuffer(plain{dst}, plain{src}, make([]byte, 256*1024))
		}
		dst.CloseWrite()
	}
	done := make(chan struct{})
	go func() { pipe(u, c); close(done) }()
	pipe(c, u)
	<-done
}
