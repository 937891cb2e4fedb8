"""Invoice notices and payment reminders in Slack (SPEC section 7), and the scheduler.

Modules: ``plan`` (which messages an invoice owes, pure), ``store`` (the outbox table: plan,
claim, record), ``render`` (Block Kit, pure), ``slack`` (one delivery try and its error
classes), ``jobs`` (``run_billing_job`` and ``remind``, plain functions of (services, now)),
``scheduler`` (APScheduler wiring and leader election), ``cli`` (``billing-bot remind``).

Decisions where the specification is silent:

* **Notice and reminders.** The notice (step ``issued``) goes out with the first reminder run
  after the invoice is issued. Reminder steps that came due at or before the issue are
  skipped (the notice covers them). If a step that came due after the issue is already due
  when the notice has not gone out yet (the bot was down), the two are merged: only that
  step is sent, and as every message shows the whole invoice (number, period, total, amount
  due, due date, how many days are left or overdue), nothing is lost; the notice is recorded
  as skipped, "merged into due+3". So after downtime each contact gets one message per
  invoice: the notice of an invoice issued late, or the latest step of an older one.
* **Paid invoices** get no more reminders. Their notice is still sent (it is the document),
  but only if it is at most 35 days old, so invoices from before the bot ran are not
  announced; open invoices are always announced or reminded, however old.
* **Contacts** are identified by their Slack id (``user:U…`` / ``channel:C…``), so a contact
  removed and added again by ``billing-bot load`` is not messaged twice; a contact added
  later gets the latest due step of open invoices; a pending row of a removed contact is
  skipped.
* **Tries.** Each try is counted (and committed) before the post. A 429 gives its try back
  and the row waits for Retry-After; 5xx, timeouts and dropped connections back off (30 s,
  doubling, at most 30 min); ``ok:false`` errors that cannot succeed fail at once; after 8
  tries the row fails. A failed row is written to the audit log and, with AUDIT_CHANNEL, a
  report is posted there through the outbox itself (so it is retried and sent once too). A
  run stops early on a token error or three transient failures in a row, leaving the rest to
  the next run.
* **Sending.** A run sweeps the due rows in id order with a cursor, in batches (claimed in one
  transaction, recorded in one), posted by a few threads, one recipient per thread at a time,
  so a contact's messages go out in the order they were planned. A 429 holds only its
  conversation for Retry-After (its other rows are given back untried) while the run goes on
  with the others; the run then sleeps until holds end, if each is at most 10 s and ends
  within 2 minutes of the run's start, and sweeps again. Longer waits are left to a later
  run.
* **Exactly once.** A row is ``sending`` while in flight, with a 10-minute lease. A timeout
  or dropped connection during the post, or a process that died, leaves it ``sending``; the
  next try first reads the conversation's recent history (up to 1,000 messages) for the
  message's ``outbox_key`` metadata and records it as sent if it is there.
* **Language.** Amounts and dates use the contact's locale (users.info, else the
  organization's, else DEFAULT_LOCALE); the sentences are English (no message catalogues).
"""
