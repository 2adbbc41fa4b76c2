-- GET /transactions/{id} tells the whole lifecycle of an id (issue 15 item 2), the
-- dead-lettered copies of its command included: the archive is looked up by the AMQP
-- message_id, which the API sets to the transaction id. Dead letters are rare, but that read
-- comes with every 404 a polling client gets, so it must not scan the archive.
CREATE INDEX dead_letters_message_id ON dead_letters (message_id);
