package fastpath

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/knftables"
)

// handoffMark marks the datagrams the ingress program hands to the
// handoff device. Its low 16 bits are clear, away from kube-proxy's
// 0x4000 and 0x8000; the guard clears it again before the device sees the
// datagram, so nothing after the host's input hook (the inner packet
// included) carries it.
const handoffMark = 0x464c0000

// guard is the netfilter rule that closes the handoff port. The handoff
// device's UDP socket listens on every address and would decapsulate any
// datagram that reaches it; the guard drops, on the host's input hook,
// every UDP datagram for the port that does not carry handoffMark, which
// only the ingress program sets, after the sender check, on a datagram it
// rewrote itself. The input hook comes after reassembly and sees every
// interface, address and family, so IP options, fragments, loopback,
// other local addresses and IPv6 all meet the rule; skb marks cannot be
// set from the network. The table outlives a killed flanneld (the device
// does not: it goes with the TUN) and the next start replaces it in one
// transaction before it creates the device, so there is no moment in
// which the device listens unguarded.
type guard struct {
	nft   knftables.Interface
	table string
}

const guardTimeout = 10 * time.Second

// guardTable names the guard's inet table after the handoff device, so
// that two flanneld on one host (flannel0, flannel1) keep their own.
func guardTable(device string) string { return "flannel-go-" + device }

// installGuard installs or replaces the guard for port in one nft
// transaction. Without nftables there is no guard, and the caller must
// not create the device.
func installGuard(device string, port int) (*guard, error) {
	g := &guard{table: guardTable(device)}
	nft, err := knftables.New(knftables.InetFamily, g.table)
	if err != nil {
		return nil, fmt.Errorf("handoff guard: nftables unavailable (the nft binary and nf_tables are needed): %w", err)
	}
	g.nft = nft
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("flannel-go: only the fast path's ingress program reaches the handoff device")})
	chain := &knftables.Chain{
		Name: "input",
		Type: knftables.PtrTo(knftables.FilterType),
		Hook: knftables.PtrTo(knftables.InputHook),
		// Ahead of the filter tables: a drop here is final whatever
		// other chains accept, and the mark is gone before they run.
		Priority: knftables.PtrTo(knftables.RawPriority),
	}
	tx.Add(chain)
	tx.Flush(chain)
	for _, r := range guardRules(port) {
		tx.Add(&knftables.Rule{Chain: chain.Name, Rule: r})
	}
	ctx, cancel := context.WithTimeout(context.Background(), guardTimeout)
	defer cancel()
	if err := nft.Run(ctx, tx); err != nil {
		return nil, fmt.Errorf("handoff guard: install table inet %s: %w", g.table, err)
	}
	return g, nil
}

// guardRules drop what the ingress program did not mark and take the mark
// off what it did.
func guardRules(port int) []string {
	dport := fmt.Sprintf("udp dport %d", port)
	mark := fmt.Sprintf("0x%08x", handoffMark)
	return []string{
		knftables.Concat(dport, "meta mark !=", mark, "counter drop"),
		knftables.Concat(dport, "meta mark set 0"),
	}
}

// Remove deletes the guard's table; call it after the device is gone.
func (g *guard) Remove() error {
	if g == nil {
		return nil
	}
	tx := g.nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	ctx, cancel := context.WithTimeout(context.Background(), guardTimeout)
	defer cancel()
	if err := g.nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("handoff guard: remove table inet %s: %w", g.table, err)
	}
	return nil
}
