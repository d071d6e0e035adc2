# AWS Application Load Balancer in front of portcullis (Terraform, AWS provider).
# TLS ends on the ALB; devices' WebSockets and uploads go on as HTTP/1.1 to the gateways on
# port 8080. The gateway side is profiles/aws-alb.toml.
#
# ALB passes WebSocket upgrades natively on HTTP and HTTPS listeners: nothing to switch on.
# Every name, CIDR and ARN below is an example: fill in the variables, or wire them to your own
# resources.
#
# Copy this file into a Terraform directory of its own: aws-nlb.tf declares the same names
# (variables, aws_lb.gw, ...), so the two cannot be loaded as one module.

variable "vpc_id" {
  type = string
}

variable "public_subnet_ids" {
  description = "Subnets the ALB lives in. Its nodes take their addresses from these: list their CIDRs in trusted_proxies (aws-alb.toml)."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate for the device-facing name (gw.example.com)."
  type        = string
}

variable "gateway_instance_ids" {
  type = list(string)
}

resource "aws_security_group" "alb" {
  name   = "portcullis-alb"
  vpc_id = var.vpc_id

  ingress {
    description = "devices: wss:// and HTTPS uploads"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    from_port   = 8080
    to_port     = 8080
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# Attach this to the gateway instances: port 8080 is reachable only from the ALB, so nobody
# can reach the gateway around it (and its X-Forwarded-For trust).
resource "aws_security_group" "gateway" {
  name   = "portcullis-gateway"
  vpc_id = var.vpc_id

  ingress {
    description     = "from the ALB only: traffic and health checks"
    from_port       = 8080
    to_port         = 8080
    protocol        = "tcp"
    security_groups = [aws_security_group.alb.id]
  }
}

resource "aws_lb" "gw" {
  name               = "portcullis"
  load_balancer_type = "application"
  subnets            = var.public_subnet_ids
  security_groups    = [aws_security_group.alb.id]

  # The ALB closes a connection that carries no data for idle_timeout seconds, WebSockets
  # included; the default is 60 s. The gateway pings every 25 s, so a live device is never
  # idle that long, but 60 s leaves room for only one lost ping, and a ping interval close to
  # the timeout races it. 300 s gives a wide margin. TCP keepalives do not count as data.
  idle_timeout = 300

  # "append" (the default): the ALB appends the peer's address to X-Forwarded-For. The gateway
  # takes the rightmost address that is not a trusted proxy, so whatever a device wrote in
  # front of it is ignored.
  xff_header_processing_mode = "append"

  # Malformed header names are dropped instead of forwarded.
  drop_invalid_header_fields = true
}

resource "aws_lb_target_group" "gw" {
  name             = "portcullis"
  vpc_id           = var.vpc_id
  target_type      = "instance"
  port             = 8080
  protocol         = "HTTP"
  protocol_version = "HTTP1" # WebSocket upgrades are HTTP/1.1 to the target

  # On deregistration (a deploy), the ALB waits this long for open connections before it cuts
  # them; the default is 300 s. Deregister first, then send SIGTERM: the gateway closes its
  # devices with 1001 spread over [shutdown] drain_window_secs (10 s) and exits within
  # drain_timeout_secs (30 s), so 60 s is enough.
  deregistration_delay = 60

  # GET /readyz: 200 while the gateway has a healthy upstream (broker, collector), 503 when it
  # has none, so a gateway cut off from the broker gets no new devices. /healthz is liveness
  # only (the process runs); it stays for the local supervisor. If every target fails, the ALB
  # routes to all of them anyway (fail open): devices then get WebSocket close 1013 (try again
  # later) from the gateway, and reconnect with backoff.
  health_check {
    enabled             = true
    protocol            = "HTTP"
    port                = "traffic-port"
    path                = "/readyz"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }

  # No stickiness: a WebSocket stays on its target for its whole life by itself, uploads are
  # independent requests, and the gateway keeps each device on the same broker on its own.
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }
}

resource "aws_lb_target_group_attachment" "gw" {
  count            = length(var.gateway_instance_ids)
  target_group_arn = aws_lb_target_group.gw.arn
  target_id        = var.gateway_instance_ids[count.index]
  port             = 8080
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.gw.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  # Everything the devices use goes to the gateways: /mqtt, /tunnel/*, /push/*, /checkin/*,
  # /probe, /readyz; the gateway answers 404 to anything else. The ALB sets no request body
  # limit for instance targets, so push uploads need nothing here. If an AWS WAF web ACL is
  # attached, check how its rules treat large bodies on /push/.
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.gw.arn
  }
}

output "alb_dns_name" {
  description = "Point gw.example.com here (CNAME or alias record)."
  value       = aws_lb.gw.dns_name
}
