//! Names and declaration of the queues and exchanges. Declaring is idempotent, so the API and
//! the worker both declare at start; a declaration with different arguments fails (406) rather
//! than silently changing a live queue — with one exception, the replication arguments (see
//! [`Topology::declare`]): a queue created before them keeps working as it is.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use tally_core::{shard_of, AmountRules, Envelope};

/// The topology of one tally installation (or of one test: each test has its own prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Name prefix of every exchange and queue.
    pub prefix: String,
    /// K, the number of shard queues.
    pub shard_count: u16,
    /// Deliveries of one message before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
    /// Replicas of a shard queue when it is created (`x-quorum-initial-group-size`).
    pub replicas: u16,
}

/// Arguments a shard queue got only once tally ran on a cluster. They matter only when a
/// queue is created (its first members, its first leader), yet RabbitMQ compares them on
/// every declaration: see [`Topology::declare`].
const REPLICATION_ARGUMENTS: [&str; 2] = ["x-quorum-initial-group-size", "x-queue-leader-locator"];

impl Topology {
    /// The topology the settings describe (prefix, K, delivery limit).
    pub fn from_settings(settings: &tally_settings::Settings) -> Self {
        Self {
            prefix: settings.broker.prefix.clone(),
            shard_count: settings.ledger.shard_count,
            delivery_limit: settings.broker.delivery_limit,
            replicas: settings.broker.quorum_group_size,
        }
    }

    /// Direct exchange every command is published to, routed by shard number.
    pub fn exchange(&self) -> String {
        format!("{}.commands", self.prefix)
    }

    /// Fanout exchange receiving dead letters of every shard queue.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The queue holding dead letters for inspection and re-publishing.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn shard_queue(&self, shard: u16) -> String {
        format!("{}.shard.{shard}", self.prefix)
    }

    /// Routing key of a shard: its number.
    pub fn routing_key(shard: u16) -> String {
        shard.to_string()
    }

    pub fn shard_of(&self, account_id: &str) -> u16 {
        shard_of(account_id, self.shard_count)
    }

    /// Where a dead letter goes when it is re-published (by `tally-worker dead-letters
    /// republish` and the API's `POST /debug/dead-letters/{id}/republish` alike): the shard of
    /// its account when the body decodes (the shard count is fixed), else the routing key it
    /// had.
    pub fn dead_letter_route(&self, body: &[u8], routing_key: &str, rules: &AmountRules) -> String {
        match Envelope::decode(body, rules) {
            Ok(env) => Self::routing_key(self.shard_of(&env.account_id)),
            Err(_) => routing_key.to_string(),
        }
    }

    /// The arguments of a shard queue. Two traps: the delivery limit must be an integer (a
    /// string is silently not enforced), and at-least-once dead-lettering needs
    /// `x-overflow = reject-publish`. With `replication`, also the replica count and
    /// `balanced` leader placement (leaders spread over the nodes, so losing one node moves
    /// only its share of the shards).
    fn shard_arguments(&self, replication: bool) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_exchange().into()),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        if replication {
            let [group_size, locator] = REPLICATION_ARGUMENTS;
            args.insert(group_size.into(), AMQPValue::LongInt(self.replicas.into()));
            args.insert(locator.into(), AMQPValue::LongString("balanced".into()));
        }
        args
    }

    /// Ready messages per queue (every shard queue, then the dead-letter queue), by passive
    /// declaration: it never creates or changes a queue.
    pub async fn queue_depths(
        &self,
        channel: &Channel,
    ) -> Result<Vec<(String, u32)>, lapin::Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut names: Vec<String> = (0..self.shard_count).map(|s| self.shard_queue(s)).collect();
        names.push(self.dead_queue());
        let mut depths = Vec::with_capacity(names.len());
        for name in names {
            let queue = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await?;
            depths.push((name, queue.message_count()));
        }
        Ok(depths)
    }

    /// Declares exchanges, queues and bindings, on channels of its own.
    ///
    /// A shard queue is declared with the replication arguments. One created by an earlier
    /// version without them makes RabbitMQ answer 406 (inequivalent argument), which closes
    /// the channel: it is then declared again, on a fresh channel, with exactly the arguments
    /// it was created with, and a warning says how to give it replicas
    /// (`rabbitmq-queues grow`; the arguments could not add them anyway: they only apply when
    /// a queue is created). Any other difference still fails.
    pub async fn declare(&self, connection: &lapin::Connection) -> Result<(), lapin::Error> {
        let mut channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(self.dead_queue().into(), QUEUE_OPTIONS, dead_args)
            .await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for shard in 0..self.shard_count {
            channel = self.declare_shard(connection, channel, shard).await?;
            channel
                .queue_bind(
                    self.shard_queue(shard).into(),
                    self.exchange().into(),
                    Self::routing_key(shard).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        crate::connection::close_channel(channel, "declared").await;
        Ok(())
    }

    /// Declares one shard queue (see [`Topology::declare`]); returns the channel to go on
    /// with (a fresh one when the first declaration closed it).
    async fn declare_shard(
        &self,
        connection: &lapin::Connection,
        channel: Channel,
        shard: u16,
    ) -> Result<Channel, lapin::Error> {
        let name = self.shard_queue(shard);
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QUEUE_OPTIONS,
                self.shard_arguments(true),
            )
            .await;
        match declared {
            Ok(_) => Ok(channel),
            Err(e) if lacks_replication_arguments(&e) => {
                let channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QUEUE_OPTIONS,
                        self.shard_arguments(false),
                    )
                    .await?;
                tracing::warn!(
                    queue = %name,
                    "shard queue was created without replication arguments; it keeps its \
                     members: add replicas with `rabbitmq-queues grow <node> all`"
                );
                Ok(channel)
            }
            Err(e) => Err(e),
        }
    }
}

/// Shard and dead-letter queues are durable.
const QUEUE_OPTIONS: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// Whether RabbitMQ refused a declaration (406 PRECONDITION_FAILED) over one of the
/// replication arguments, which an existing queue lacks: its message names the argument
/// ("inequivalent arg 'x-queue-leader-locator' for queue …").
fn lacks_replication_arguments(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) if e.get_id() == 406 => {
            let message = e.get_message().as_str();
            REPLICATION_ARGUMENTS
                .iter()
                .any(|arg| message.contains(&format!("'{arg}'")))
        }
        _ => false,
    }
}
