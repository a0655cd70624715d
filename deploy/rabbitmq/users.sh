#!/bin/sh
# The one-shot `broker-users` service of deploy/compose.yaml: Herald's broker users, one per role, with
# the permissions `herald broker setup` grants (deploy/herald_ops/broker.py is the reference;
# tests/unit/test_deploy.py holds the lines below equal to it). Nothing here is a secret: the passwords
# come from the environment, which compose fills from variables that have no default. Run on every `up`,
# it creates the missing users and sets every password, so changing a password is a restart.
# (No monitor user: nothing in compose reads queue lengths; KEDA does on Kubernetes.)
set -eu

existing=$(rabbitmqctl -q list_users --no-table-headers | cut -f1)

# user <name> <password>: create the user, or set its password. The arguments follow `--`, so a password
# starting with "-" is not read as an option.
user() {
  if printf '%s\n' "$existing" | grep -qxF -- "$1"; then
    rabbitmqctl -q change_password -- "$1" "$2"
  else
    rabbitmqctl -q add_user -- "$1" "$2"
  fi
}

user herald-gateway "$BROKER_GATEWAY_PASSWORD"
rabbitmqctl -q set_permissions -p / -- herald-gateway '^(herald\.users|herald\.broadcast|herald\.user\..+|amq\.gen-.+)$' '^(herald\.user\..+|amq\.gen-.+|amq\.default)$' '^(herald\.users|herald\.broadcast|herald\.user\..+|amq\.gen-.+|amq\.rabbitmq\.reply-to)$'
user herald-worker "$BROKER_WORKER_PASSWORD"
rabbitmqctl -q set_permissions -p / -- herald-worker '^herald\..+$' '^(herald\..+|amq\.default)$' '^herald\..+$'
user herald-delivery "$BROKER_DELIVERY_PASSWORD"
rabbitmqctl -q set_permissions -p / -- herald-delivery '^herald\.deliveries(\..+)?$' '^(herald\.deliveries\..+|amq\.default)$' '^herald\.deliveries(\..+)?$'
user herald-producer "$BROKER_PRODUCER_PASSWORD"
rabbitmqctl -q set_permissions -p / -- herald-producer '^$' '^herald\.events$' '^$'
echo "broker users ready: herald-gateway herald-worker herald-delivery herald-producer"
