//go:build linux

package location

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Multicast groups of NETLINK_ROUTE (linux/rtnetlink.h); the syscall package lacks them.
const (
	rtmgrpIPv4IfAddr = 0x10  // RTMGRP_IPV4_IFADDR
	rtmgrpIPv4Route  = 0x40  // RTMGRP_IPV4_ROUTE
	rtmgrpIPv6IfAddr = 0x100 // RTMGRP_IPV6_IFADDR
	rtmgrpIPv6Route  = 0x400 // RTMGRP_IPV6_ROUTE
)

// WatchNetwork calls fn when the host's addresses or routes change (IPv4 and IPv6), until
// ctx is done. On Linux it listens on a NETLINK_ROUTE socket; fn is called once per batch
// of messages read together, on WatchNetwork's own goroutine (callers that re-detect
// should still debounce: bringing an interface up sends several batches). It returns an
// error when netlink cannot be used; callers then rely on their timer.
func WatchNetwork(ctx context.Context, fn func()) error {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, syscall.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening a netlink socket: %w", err)
	}
	groups := uint32(rtmgrpIPv4IfAddr | rtmgrpIPv6IfAddr | rtmgrpIPv4Route | rtmgrpIPv6Route)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK, Groups: groups}); err != nil {
		_ = syscall.Close(fd)
		return fmt.Errorf("joining the netlink address and route groups: %w", err)
	}
	// A non-blocking descriptor goes to the runtime poller, so Close ends a pending Read.
	f := os.NewFile(uintptr(fd), "netlink-route")
	stop := context.AfterFunc(ctx, func() { _ = f.Close() })
	go func() {
		defer stop()
		defer f.Close()
		buf := make([]byte, 1<<16)
		for {
			n, err := f.Read(buf)
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, syscall.ENOBUFS):
				fn() // messages were lost: something changed
				continue
			case err != nil:
				return
			}
			if routeChange(buf[:n]) {
				fn()
			}
		}
	}()
	return nil
}

// routeChange tells whether a batch of netlink messages holds an address or route change.
func routeChange(b []byte) bool {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return true // unreadable, but the kernel only sends the groups we joined
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case syscall.RTM_NEWADDR, syscall.RTM_DELADDR, syscall.RTM_NEWROUTE, syscall.RTM_DELROUTE:
			return true
		}
	}
	return false
}
