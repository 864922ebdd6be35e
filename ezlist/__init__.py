"""ezlist: an ezmlm-style mailing list manager posting through the mta's queue.

Public modules (import them directly; each opens with its own manual):
    ezlist.listdir      make_list, load_list, load_list_dir, edit_list, read_key,
                        ListOptions, ListConfig, ListError
    ezlist.subscribers  SubscriberDB, BulkResult, Subscriber, Confirmation, normalize_address
    ezlist.cookies      make_cookie, check_cookie, split_cookie, new_key
    ezlist.addresses    parse_command, Command, Action and the address builders
    ezlist.headers      raw-bytes header parsing and editing
    ezlist.post         check_post, prepare_post, list_fields
    ezlist.oneclick     post_key, template_url, private_field, parse_query, verify (RFC 8058)
    ezlist.oneclick_web handle_request, serve_cgi: the ``ezlist oneclick`` CGI program
    ezlist.archive      next_number, archive_post, read_archived
    ezlist.bounceparse  failed_addresses, is_ignorable, is_qsbmf
    ezlist.bounces      BounceBook, Notice, BounceStatus, Removal, State
    ezlist.templates    render, write_defaults, TEMPLATE_NAMES
    ezlist.deliver      run, main: the dot-qmail program (python -m ezlist.deliver LISTDIR)
    ezlist.fanout       post_message, send_reply, PostResult, send records
    ezlist.manage       handle, refusal: email commands, double opt-in
    ezlist.moderate     hold_post, accept, reject, expire, moderators, Reply
    ezlist.returns      handle, send_due_notices, open_book: bounce intake, warn/probe
    ezlist.status       progress, send_status, format_status, Progress, SendStatus
"""
