//! The `healthcheck` subcommand of both binaries: one `grpc.health.v1.Health/Check` against
//! the service's own listen address, so a container healthcheck needs no other tool in the
//! image. An unspecified listen address (`0.0.0.0`, `[::]`) is checked on loopback.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, bail};
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The address a local client reaches a server listening on `listen` at.
#[must_use]
pub fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks the server listening on `listen` for the health of `service` ("" is the server as
/// a whole).
///
/// # Errors
/// When the server cannot be reached within `timeout` or answers anything but SERVING.
pub async fn check(listen: SocketAddr, service: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = local_target(listen);
    let channel = Endpoint::from_shared(format!("http://{target}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .with_context(|| format!("health check of {target}"))?;
    let status = reply.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
        bail!("{target} is {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_checked_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(local_target(v4), "127.0.0.1:50051".parse().unwrap());
        let v6: SocketAddr = "[::]:7".parse().unwrap();
        assert_eq!(local_target(v6), "[::1]:7".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:9".parse().unwrap();
        assert_eq!(local_target(given), given);
    }
}
