# shellcheck shell=dash disable=SC2034
#
# /lib/vpncrypt/uci.sh: the one place that turns a `config server` or `config client`
# section of /etc/config/vpncrypt into a vpncryptd configuration file.  Sourced (after
# /lib/functions.sh and `config_load vpncrypt`) by /etc/init.d/vpncrypt, which runs the
# sections no network interface claims, and by /lib/netifd/proto/vpncrypt.sh, which
# runs the ones that /etc/config/network names in an `option proto 'vpncrypt'`
# interface (netifd then adds their addresses and routes, and the firewall sees them).
#
# UCI schema (documented with examples in /etc/config/vpncrypt and openwrt/README.md):
#   config server NAME   enabled, listen, interface, list address, server_id, mtu,
#                        user, state_dir, offload, configure_interface
#   config peer NAME     a client of a server: server (the NAME of its `config server`),
#                        enabled, name (default: the section name), id, key or key_file,
#                        list allowed_ips
#   config client NAME   enabled, id, server (host:port), server_id, key or key_file,
#                        interface, list address, list routes, keepalive, mtu, user,
#                        state_dir, offload, configure_interface
# Values are copied verbatim, after a check that they cannot change the structure of
# the generated file; vpncryptd itself validates what they mean.

# Where the generated files go (netifd's in a subdirectory, which the init script's
# clean-up leaves alone).  Overridable only so the rendering can be tested.
VPNCRYPT_RUN_DIR="${VPNCRYPT_RUN_DIR:-/var/etc/vpncrypt}"
# The daemon's state_dir (control sockets) unless a section sets one: vpncryptd's own
# default, /run/vpncrypt, is not on tmpfs on every OpenWrt.  `vpncrypt show` needs
# --state-dir=/var/run/vpncrypt to find the daemons.
VPNCRYPT_STATE_DIR="${VPNCRYPT_STATE_DIR:-/var/run/vpncrypt}"
# Where the examples keep key files.  Made at run time, not shipped: the packages
# feed's install step deletes empty directories from a package.
VPNCRYPT_KEY_DIR="${VPNCRYPT_KEY_DIR:-/etc/vpncrypt}"

SERVER_OPTIONS="listen interface address server_id mtu user state_dir offload configure_interface"
PEER_OPTIONS="id key key_file allowed_ips"
CLIENT_OPTIONS="id server server_id key key_file interface address routes keepalive mtu user state_dir offload configure_interface"
LIST_OPTIONS=" address allowed_ips routes "

vpncrypt_error() {
	logger -t vpncrypt -p daemon.err -- "$*" 2>/dev/null
	echo "vpncrypt: $*" >&2
}

# Succeeds if $1 is a non-empty value made only of characters that cannot start a
# comment, a continuation line or a section in the generated INI file: letters, digits
# and . _ : / @ + = [ ] - (no whitespace, no '#', no ';').
vpncrypt_safe_value() {
	case "$1" in
	'' | *[!]A-Za-z0-9._:/@+=[-]*) return 1 ;;
	esac
	return 0
}

# vpncrypt_join VALUE: print the whitespace-separated entries of a list as "a, b, c";
# fail if an entry is not a safe value.
vpncrypt_join() (
	set -f
	out=""
	# shellcheck disable=SC2086 # splitting the list into its entries is the point
	for item in $1; do
		vpncrypt_safe_value "$item" || exit 1
		out="${out:+$out, }$item"
	done
	printf '%s' "$out"
)

# vpncrypt_emit SECTION OPTION...: print "option = value" for each option that is set
# in SECTION; fail (with a message) on a value that is not safe to write.
vpncrypt_emit() {
	local section="$1" option value
	shift
	for option in "$@"; do
		# Under netifd the interface is netifd's to configure, whatever the section says.
		[ -n "$VPNCRYPT_NETIFD" ] && [ "$option" = configure_interface ] && continue
		config_get value "$section" "$option"
		[ -n "$value" ] || continue
		case "$LIST_OPTIONS" in
		*" $option "*)
			if ! value="$(vpncrypt_join "$value")" || [ -z "$value" ]; then
				vpncrypt_error "section '$section': list '$option' has an entry with a character that is not allowed"
				return 1
			fi
			;;
		*)
			if ! vpncrypt_safe_value "$value"; then
				vpncrypt_error "section '$section': option '$option' is not a single word of allowed characters"
				return 1
			fi
			;;
		esac
		case "$option" in
		key_file)
			case "$value" in
			/*) ;;
			*)
				vpncrypt_error "section '$section': key_file must be an absolute path (e.g. /etc/vpncrypt/$section.key)"
				return 1
				;;
			esac
			;;
		esac
		printf '%s = %s\n' "$option" "$value"
	done
}

# config_foreach callback: print the [client NAME] section of peer $1 if it belongs to
# the server being rendered ($VPNCRYPT_SERVER) and is enabled.
vpncrypt_emit_peer() {
	local section="$1" server enabled name
	config_get server "$section" server
	[ "$server" = "$VPNCRYPT_SERVER" ] || return 0
	config_get_bool enabled "$section" enabled 1
	[ "$enabled" = 1 ] || return 0
	config_get name "$section" name "$section"
	case "$name" in
	'' | *[!A-Za-z0-9_.@+-]*)
		vpncrypt_error "peer '$section': name '$name' may only contain letters, digits and _ . @ + -"
		VPNCRYPT_FAILED=1
		return 0
		;;
	esac
	printf '\n[client %s]\n' "$name"
	# shellcheck disable=SC2086 # word list
	vpncrypt_emit "$section" $PEER_OPTIONS || VPNCRYPT_FAILED=1
}

vpncrypt_default_state_dir() {
	local state_dir
	config_get state_dir "$1" state_dir
	[ -n "$state_dir" ] || printf 'state_dir = %s\n' "$VPNCRYPT_STATE_DIR"
}

# vpncrypt_render SECTION KIND: print the configuration file of a `config server` or
# `config client` section; fail if any value was refused.  With VPNCRYPT_NETIFD set (to
# the network interface that runs it), the file says `configure_interface = no`.
vpncrypt_render() {
	local section="$1" kind="$2" options by
	by="/etc/init.d/vpncrypt"
	[ -z "$VPNCRYPT_NETIFD" ] || by="netifd (network interface $VPNCRYPT_NETIFD)"
	echo "# Generated by $by from /etc/config/vpncrypt ($kind '$section')."
	echo "# Edit /etc/config/vpncrypt instead: this file is rewritten on every start."
	echo "[$kind]"
	options="$CLIENT_OPTIONS"
	[ "$kind" = server ] && options="$SERVER_OPTIONS"
	# shellcheck disable=SC2086 # word list
	vpncrypt_emit "$section" $options || return 1
	vpncrypt_default_state_dir "$section"
	[ -z "$VPNCRYPT_NETIFD" ] || echo "configure_interface = no"
	if [ "$kind" = server ]; then
		VPNCRYPT_SERVER="$section"
		VPNCRYPT_FAILED=0
		config_foreach vpncrypt_emit_peer peer
		[ "$VPNCRYPT_FAILED" = 0 ] || return 1
	fi
}

# vpncrypt_write SECTION KIND FILE: render into FILE (mode 0600) atomically.
vpncrypt_write() {
	local section="$1" kind="$2" file="$3" tmp
	tmp="${file%/*}/.${file##*/}.tmp"
	if (umask 077 && vpncrypt_render "$section" "$kind" >"$tmp"); then
		mv -f "$tmp" "$file"
	else
		rm -f "$tmp"
		return 1
	fi
}

# vpncrypt_kind SECTION: print "server" or "client" (the section's type); fail for
# anything else, e.g. a section that does not exist.
vpncrypt_kind() {
	local kind
	config_get kind "$1" TYPE
	case "$kind" in
	server | client) echo "$kind" ;;
	*) return 1 ;;
	esac
}

# vpncrypt_check_section_name SECTION: section names become file and instance names.
vpncrypt_check_section_name() {
	case "$1" in
	'' | *[!A-Za-z0-9_]*)
		vpncrypt_error "section name '$1' may only contain letters, digits and _"
		return 1
		;;
	esac
}

# vpncrypt_make_dir DIR: create DIR mode 0700 if it is missing (the run and key
# directories hold keys).
vpncrypt_make_dir() {
	[ -d "$1" ] || (umask 077 && mkdir -p "$1")
}

# config_foreach callback over /etc/config/network interfaces: note in VPNCRYPT_CLAIMED
# ("SECTION=INTERFACE ...") the vpncrypt sections netifd runs.
vpncrypt_note_claim() {
	local proto tunnel
	config_get proto "$1" proto
	[ "$proto" = vpncrypt ] || return 0
	config_get tunnel "$1" tunnel
	[ -n "$tunnel" ] && VPNCRYPT_CLAIMED="$VPNCRYPT_CLAIMED $tunnel=$1"
}

# vpncrypt_load_claims: set VPNCRYPT_CLAIMED from /etc/config/network (replaces the
# loaded configuration: call it before `config_load vpncrypt`).
vpncrypt_load_claims() {
	VPNCRYPT_CLAIMED=""
	config_load network
	config_foreach vpncrypt_note_claim interface
}

# vpncrypt_claimed_by SECTION: print the network interface that runs SECTION, if any.
vpncrypt_claimed_by() {
	local pair
	for pair in $VPNCRYPT_CLAIMED; do
		[ "${pair%%=*}" = "$1" ] && echo "${pair#*=}" && return 0
	done
	return 1
}
