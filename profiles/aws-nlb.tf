# AWS Network Load Balancer in front of portcullis (Terraform, AWS provider).
# The NLB passes TCP through untouched: TLS ends on the gateway itself (its own certificate,
# which devices can pin), and the device's address arrives in a PROXY protocol v2 header. The
# gateway side is profiles/aws-nlb.toml.
#
# WebSocket needs nothing at layer 4: the upgrade, the frames and the uploads are bytes inside
# TLS to the NLB. Every name, CIDR and ARN below is an example.
#
# Copy this file into a Terraform directory of its own: aws-alb.tf declares the same names
# (variables, aws_lb.gw, ...), so the two cannot be loaded as one module.

variable "vpc_id" {
  type = string
}

variable "vpc_cidr" {
  description = "The NLB's nodes take addresses from its subnets in this VPC: this is proxy_protocol_from in aws-nlb.toml."
  type        = string
  default     = "10.0.0.0/16"
}

variable "public_subnet_ids" {
  type = list(string)
}

variable "gateway_instance_ids" {
  type = list(string)
}

resource "aws_lb" "gw" {
  name                             = "portcullis"
  load_balancer_type               = "network"
  subnets                          = var.public_subnet_ids
  enable_cross_zone_load_balancing = true
}

resource "aws_lb_target_group" "gw" {
  name        = "portcullis"
  vpc_id      = var.vpc_id
  target_type = "instance"
  port        = 8443
  protocol    = "TCP"

  # The NLB prepends a PROXY v2 header with the device's address to every connection. The
  # gateway listener requires it (proxy_protocol = "v2") and believes it only from
  # proxy_protocol_from (the VPC CIDR).
  proxy_protocol_v2 = true

  # Client IP preservation is on by default for instance targets: the gateway would then see
  # the device's own address as the TCP peer, which is not in proxy_protocol_from, and refuse
  # the PROXY header (connection closed, logged). Turn it off: the peer is then the NLB's
  # private address, and the device's address comes from the PROXY header alone.
  preserve_client_ip = "false"

  # On deregistration the NLB keeps open connections for this long (default 300 s). Deregister
  # first, then SIGTERM: the gateway closes its devices with 1001 within 10 s and exits within
  # 30 s ([shutdown] in aws-nlb.toml), so 60 s is enough.
  deregistration_delay = 60

  # HTTPS on the traffic port exercises the whole path a device uses: PROXY header, TLS, then
  # GET /readyz (200 while the gateway has a healthy upstream, 503 when it has none). With
  # proxy_protocol_v2 on, health-check connections also carry a PROXY v2 header, of the LOCAL
  # kind (no client address); the gateway accepts it from proxy_protocol_from and serves the
  # check. The NLB does not verify the gateway's certificate here.
  # A plain TCP check (protocol = "TCP") would only prove the port is open, not that the
  # gateway reaches its broker. /healthz (liveness) stays for the local supervisor.
  health_check {
    enabled             = true
    protocol            = "HTTPS"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 3
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group_attachment" "gw" {
  count            = length(var.gateway_instance_ids)
  target_group_arn = aws_lb_target_group.gw.arn
  target_id        = var.gateway_instance_ids[count.index]
  port             = 8443
}

# TCP listener: TLS passes through to the gateway. Its idle timeout is 350 s by default
# (configurable 60-6000 s on TCP listeners), far above the gateway's 25 s pings.
# A TLS listener (protocol = "TLS", certificate_arn = ...) would end TLS on the NLB instead:
# its 350 s idle timeout cannot be changed, which is still fine with 25 s pings, but devices
# would then see the listener's ACM certificate (pin it only if you imported its key yourself),
# and the gateway listener would need no [listener.tls].
resource "aws_lb_listener" "wss" {
  load_balancer_arn = aws_lb.gw.arn
  port              = 443
  protocol          = "TCP"
  # tcp_idle_timeout_seconds = 350 # the default already; only a much longer ping would need more

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gw.arn
  }
}

# With preserve_client_ip off, the NLB's nodes connect from their private addresses: admit
# 8443 from the VPC CIDR only (devices cannot reach the gateway directly).
resource "aws_security_group" "gateway" {
  name   = "portcullis-gateway"
  vpc_id = var.vpc_id

  ingress {
    description = "from the NLB's nodes: traffic and health checks"
    from_port   = 8443
    to_port     = 8443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
}

output "nlb_dns_name" {
  description = "Point gw.example.com here (CNAME or alias record)."
  value       = aws_lb.gw.dns_name
}
