//! Kernel counters from the text of /proc/net files, as read inside a namespace (the files
//! show the reader's namespace): per-device packets (/proc/net/dev) and IP counters
//! (/proc/net/snmp, /proc/net/snmp6). Pure parsing, for tests, benches and checks.

/// Packets `dev` received and sent, `(rx, tx)`, from the text of /proc/net/dev; None without
/// such a device.
pub fn dev_packets(proc_net_dev: &str, dev: &str) -> Option<(u64, u64)> {
    let line = proc_net_dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(dev)?.strip_prefix(':'))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    Some((*v.get(1)?, *v.get(9)?))
}

/// The `Ip:` counter `name` (`ForwDatagrams`, `FragCreates`, ...) from the text of
/// /proc/net/snmp; None without it.
pub fn snmp_ip(proc_net_snmp: &str, name: &str) -> Option<u64> {
    let mut ip = proc_net_snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next()?, ip.next()?);
    let col = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// The counter `name` (`Ip6OutForwDatagrams`, ...) from the text of /proc/net/snmp6.
pub fn snmp6(proc_net_snmp6: &str, name: &str) -> Option<u64> {
    proc_net_snmp6.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == name).then(|| w.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
weft.vx: 1234567   890    0    0    0     0          0         0  7654321     456    0    0    0     0       0          0
weft.vx2:      1      2    0    0    0     0          0         0        3       4    0    0    0     0       0          0
";

    #[test]
    fn device_packets_by_exact_name() {
        assert_eq!(dev_packets(DEV, "weft.vx"), Some((890, 456)));
        assert_eq!(dev_packets(DEV, "weft.vx2"), Some((2, 4)));
        assert_eq!(dev_packets(DEV, "lo"), Some((10, 10)));
        assert_eq!(dev_packets(DEV, "eth0"), None);
        assert_eq!(dev_packets(DEV, "weft"), None);
    }

    #[test]
    fn ip_counters_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives ForwDatagrams FragCreates\n\
                    Ip: 1 64 100 42 7\n\
                    Icmp: InMsgs\nIcmp: 3\n";
        assert_eq!(snmp_ip(snmp, "ForwDatagrams"), Some(42));
        assert_eq!(snmp_ip(snmp, "FragCreates"), Some(7));
        assert_eq!(snmp_ip(snmp, "InMsgs"), None);
        let text6 = "Ip6InReceives                   \t17\nIp6OutForwDatagrams             \t5\n";
        assert_eq!(snmp6(text6, "Ip6OutForwDatagrams"), Some(5));
        assert_eq!(snmp6(text6, "Ip6OutForw"), None);
    }
}
