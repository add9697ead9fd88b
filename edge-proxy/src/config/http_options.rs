//! HTTP protocol options shared by listeners (downstream) and clusters (upstream): only
//! Envoy's defaults are implemented, so any field set is refused, naming it.

use tollgate_proto::envoy::config::core::v3 as core_pb;

use super::{Rejection, reject_set};

/// Accepts HTTP/1.1 options only where they are Envoy's defaults.
#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
pub(crate) fn http1_options(proto: &core_pb::Http1ProtocolOptions) -> Result<(), Rejection> {
    let core_pb::Http1ProtocolOptions {
        allow_absolute_url,
        accept_http_10,
        default_host_for_http_10,
        header_key_format,
        enable_trailers,
        allow_chunked_length,
        override_stream_error_on_invalid_http_message,
        send_fully_qualified_url,
        use_balsa_parser,
        allow_custom_methods,
        ignore_http_11_upgrade,
    } = proto;
    reject_set(&[
        (allow_absolute_url.is_some(), "allow_absolute_url"),
        (*accept_http_10, "accept_http_10"),
        (
            !default_host_for_http_10.is_empty(),
            "default_host_for_http_10",
        ),
        (header_key_format.is_some(), "header_key_format"),
        (*enable_trailers, "enable_trailers"),
        (*allow_chunked_length, "allow_chunked_length"),
        (
            override_stream_error_on_invalid_http_message.is_some(),
            "override_stream_error_on_invalid_http_message",
        ),
        (*send_fully_qualified_url, "send_fully_qualified_url"),
        // Envoy's choice of HTTP/1 parser; this proxy has its own either way.
        (use_balsa_parser.is_some(), "use_balsa_parser"),
        (*allow_custom_methods, "allow_custom_methods"),
        (!ignore_http_11_upgrade.is_empty(), "ignore_http_11_upgrade"),
    ])
}

/// Accepts HTTP/2 options only where they are Envoy's defaults.
#[allow(deprecated)] // deprecated fields still change behaviour when set: they must be read
pub(crate) fn http2_options(proto: &core_pb::Http2ProtocolOptions) -> Result<(), Rejection> {
    let core_pb::Http2ProtocolOptions {
        hpack_table_size,
        max_concurrent_streams,
        initial_stream_window_size,
        initial_connection_window_size,
        allow_connect,
        allow_metadata,
        max_outbound_frames,
        max_outbound_control_frames,
        max_consecutive_inbound_frames_with_empty_payload,
        max_inbound_priority_frames_per_stream,
        max_inbound_window_update_frames_per_data_frame_sent,
        stream_error_on_invalid_http_messaging,
        override_stream_error_on_invalid_http_message,
        custom_settings_parameters,
        connection_keepalive,
        use_oghttp2_codec,
        max_metadata_size,
        enable_huffman_encoding,
        max_header_field_size_kb,
        disallow_obs_text,
        stream_reset_burst,
        stream_reset_rate,
    } = proto;
    reject_set(&[
        (hpack_table_size.is_some(), "hpack_table_size"),
        (max_concurrent_streams.is_some(), "max_concurrent_streams"),
        (
            initial_stream_window_size.is_some(),
            "initial_stream_window_size",
        ),
        (
            initial_connection_window_size.is_some(),
            "initial_connection_window_size",
        ),
        (*allow_connect, "allow_connect"),
        (*allow_metadata, "allow_metadata"),
        (max_outbound_frames.is_some(), "max_outbound_frames"),
        (
            max_outbound_control_frames.is_some(),
            "max_outbound_control_frames",
        ),
        (
            max_consecutive_inbound_frames_with_empty_payload.is_some(),
            "max_consecutive_inbound_frames_with_empty_payload",
        ),
        (
            max_inbound_priority_frames_per_stream.is_some(),
            "max_inbound_priority_frames_per_stream",
        ),
        (
            max_inbound_window_update_frames_per_data_frame_sent.is_some(),
            "max_inbound_window_update_frames_per_data_frame_sent",
        ),
        (
            *stream_error_on_invalid_http_messaging,
            "stream_error_on_invalid_http_messaging",
        ),
        (
            override_stream_error_on_invalid_http_message.is_some(),
            "override_stream_error_on_invalid_http_message",
        ),
        (
            !custom_settings_parameters.is_empty(),
            "custom_settings_parameters",
        ),
        (connection_keepalive.is_some(), "connection_keepalive"),
        // Envoy's choice of HTTP/2 library; this proxy has its own either way.
        (use_oghttp2_codec.is_some(), "use_oghttp2_codec"),
        (max_metadata_size.is_some(), "max_metadata_size"),
        (enable_huffman_encoding.is_some(), "enable_huffman_encoding"),
        (
            max_header_field_size_kb.is_some(),
            "max_header_field_size_kb",
        ),
        (disallow_obs_text.is_some(), "disallow_obs_text"),
        (stream_reset_burst.is_some(), "stream_reset_burst"),
        (stream_reset_rate.is_some(), "stream_reset_rate"),
    ])
}
