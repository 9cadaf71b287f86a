//! A tuple of extractors is an extractor: what a run-time handler takes when it needs more
//! than one argument (`Handler::on::<(OrderPlaced, State<Db>)>(|(ev, db)| ...)`).

use super::{Combine, FromMessage, HandlerError, Incoming, NoReply, Resources, first_some};

// `(A, B, C)` combines `A`'s answer with that of `(B, C)`, so one where-clause per arity
// says "at most one argument is a request event".
macro_rules! tuple_extractor {
    ($head:ident $(, $rest:ident)*) => {
        impl<$head: FromMessage $(, $rest: FromMessage)*> FromMessage for ($head, $($rest,)*)
        where
            ($($rest,)*): FromMessage,
            $head::Rpc: Combine<<($($rest,)*) as FromMessage>::Rpc>,
        {
            const TOPIC: Option<&'static str> = first_some(&[$head::TOPIC $(, $rest::TOPIC)*]);
            const EVENT: Option<&'static str> = first_some(&[$head::EVENT $(, $rest::EVENT)*]);
            const EVENTS: usize = $head::EVENTS $(+ $rest::EVENTS)*;
            const SAGA: Option<&'static str> = first_some(&[$head::SAGA $(, $rest::SAGA)*]);
            const SAGAS: usize = $head::SAGAS $(+ $rest::SAGAS)*;
            type Rpc = <$head::Rpc as Combine<<($($rest,)*) as FromMessage>::Rpc>>::Out;

            #[allow(non_snake_case)]
            fn from_message(incoming: &Incoming) -> Result<Self, HandlerError> {
                Ok(($head::from_message(incoming)?, $($rest::from_message(incoming)?,)*))
            }

            fn check(resources: &Resources) -> Result<(), String> {
                $head::check(resources)?;
                $($rest::check(resources)?;)*
                Ok(())
            }
        }
    };
}

/// The end of the recursion: no arguments, no answer.
impl FromMessage for () {
    type Rpc = NoReply;

    fn from_message(_: &Incoming) -> Result<Self, HandlerError> {
        Ok(())
    }
}

tuple_extractor!(A);
tuple_extractor!(A, B);
tuple_extractor!(A, B, C);
tuple_extractor!(A, B, C, D);
tuple_extractor!(A, B, C, D, E);
tuple_extractor!(A, B, C, D, E, F);
